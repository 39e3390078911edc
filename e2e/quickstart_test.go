package e2e

import (
	"bytes"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickstart follows the README quickstart with the real binaries, as a shell user would
// (relative paths in one working directory, kasctl for every secret), then checks what the
// quickstart promises beyond the happy path: a bad agent token is refused and counted, an unknown
// agent gets 503 with Retry-After, SIGTERM drains kasd cleanly and sends agents a GoAway, and a
// kasd restarted on the same --data-dir keeps its CA and is found again by the agent at once, also
// after SIGKILL (stateless reset).
func TestQuickstart(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	web := startService(t, "web")

	// kasctl secret -o jwt.secret
	kasctl(t, dir, "secret", "-o", "jwt.secret")
	// kasctl agent-token demo --token-out demo.token --tokens-file tokens.yaml
	out := kasctl(t, dir, "agent-token", "demo", "--token-out", "demo.token", "--tokens-file", "tokens.yaml")
	if !strings.Contains(out, "written to demo.token") || !strings.Contains(out, "- id: demo") {
		t.Fatalf("kasctl agent-token output:\n%s", out)
	}

	kasd := startKasd(t, KasdOpts{Dir: dir, TokensFile: "tokens.yaml", JWTSecretFile: "jwt.secret", DataDir: "kasd-data"})
	ca := readFile(t, kasd.CAFile())
	agent := startAgentd(t, AgentdOpts{
		Dir:       dir,
		KasAddrs:  []string{kasd.Opts.AgentAddr},
		TokenFile: "demo.token",
		CAFile:    "kasd-data/ca.pem",
		Services:  map[string]string{"web": web.URL},
	})
	jwt := strings.TrimSpace(kasctl(t, dir, "jwt", "--secret-file", "jwt.secret", "--agents", "demo,nobody,intruder"))

	// An unknown agent waits --route-timeout (5s by default) for the agent to connect before the
	// 503: ask now and look at the answer at the end, so the wait overlaps the other checks.
	type result struct {
		r   *Response
		err error
	}
	unknownAgent := make(chan result, 1)
	go func() {
		r, err := tryGet(kasd.ProxyURL("nobody", "web", "/"), jwt)
		unknownAgent <- result{r, err}
	}()

	// The quickstart's request, with net/http.
	url := kasd.ProxyURL("demo", "web", "/hello?x=1")
	r := get(t, url, jwt)
	if r.Status != 200 || r.Body != "hello from web: GET /hello?x=1" || r.Header.Get("X-Service") != "web" {
		t.Fatalf("GET %s: %d %q %v", url, r.Status, r.Body, r.Header)
	}
	if r.Header.Get("Qkas-Request-Id") == "" {
		t.Errorf("no Qkas-Request-Id on a proxied response: %v", r.Header)
	}
	wantLocal := 1.0
	// And with curl, exactly as the README shows it.
	if curl, err := exec.LookPath("curl"); err == nil {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(curl, "-sS", "--max-time", "60", "-w", "\n%{http_code}", "-H", "Authorization: Bearer "+jwt, url)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("curl: %v\n%s", err, stderr.String())
		}
		if got := stdout.String(); got != "hello from web: GET /hello?x=1\n200" {
			t.Fatalf("curl printed %q", got)
		}
		wantLocal++
	} else {
		t.Log("no curl: checked with net/http only")
	}
	for _, a := range web.Authorizations() {
		if a != "" {
			t.Errorf("the service received the client's Authorization header %q", a)
		}
	}
	if v, _ := metric(t, kasd.ObsURL(), "kasd_requests_total", "route=local", "code=200"); v != wantLocal {
		t.Errorf(`kasd_requests_total{route="local",code="200"} = %v, want %v`, v, wantLocal)
	}
	if v, _ := metric(t, agent.ObsURL(), "agentd_requests_total", "service=web", "code=200"); v != wantLocal {
		t.Errorf(`agentd_requests_total{service="web",code="200"} = %v, want %v`, v, wantLocal)
	}
	if r := get(t, kasd.APIURL()+"/api/v1/agents", jwt); r.Status != 200 || !strings.Contains(r.Body, `"id":"demo"`) || !strings.Contains(r.Body, `"web"`) {
		t.Errorf("GET /api/v1/agents: %d %s", r.Status, r.Body)
	}
	if r := get(t, url, ""); r.Status != 401 || r.ErrorCode() != "unauthenticated" {
		t.Errorf("GET without a JWT: %d %s", r.Status, r.Body)
	}

	// An agent whose token is not in tokens.yaml (a well-formed token kasd never heard of).
	kasctl(t, dir, "agent-token", "intruder", "--token-out", "intruder.token")
	intruder := startAgentd(t, AgentdOpts{
		Name:        "agentd-intruder",
		Dir:         dir,
		KasAddrs:    []string{kasd.Opts.AgentAddr},
		TokenFile:   "intruder.token",
		CAFile:      "kasd-data/ca.pem",
		Services:    map[string]string{"web": web.URL},
		NoWaitReady: true,
	})
	waitMetric(t, kasd.ObsURL(), 1, "kasd_agent_connections_total", "result=unauthenticated")
	kasd.WaitLog(t, "agent connection refused", "unauthenticated")
	intruder.WaitLog(t, "connecting to kasd failed")
	if intruder.Connected() {
		t.Error("agentd with a bad token says it is connected")
	}
	if r := get(t, kasd.APIURL()+"/api/v1/agents", jwt); strings.Contains(r.Body, "intruder") {
		t.Errorf("a refused agent is listed: %s", r.Body)
	}
	if code := intruder.Stop(t); code != 0 {
		t.Errorf("agentd (bad token) exit code %d after SIGTERM", code)
	}

	select {
	case res := <-unknownAgent:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.r.Status != 503 || res.r.ErrorCode() != "agent_not_connected" || res.r.Header.Get("Retry-After") == "" {
			t.Errorf("unknown agent: %d Retry-After=%q %s", res.r.Status, res.r.Header.Get("Retry-After"), res.r.Body)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no answer for an unknown agent")
	}

	// SIGTERM: kasd drains (GoAway to the agent) and exits 0; the agent keeps trying to reconnect.
	if code := kasd.Stop(t); code != 0 {
		t.Fatalf("kasd exit code %d after SIGTERM", code)
	}
	for _, msg := range []string{"draining", "kasd stopped"} {
		if kasd.logLine(msg) == "" {
			t.Errorf("kasd did not log %q", msg)
		}
	}
	// The issue: "GoAway (reconnect elsewhere, used when kasd drains)". The agent says why its
	// connection ended: "goaway", or "lost: ..." when kasd closed it before the GoAway arrived.
	if line := agent.WaitLog(t, "connection to kasd ended"); !strings.Contains(line, `"reason":"goaway"`) {
		t.Errorf("kasd drained without the agent receiving a GoAway: %s", line)
	} else if v, _ := metric(t, agent.ObsURL(), "agentd_goaways_total"); v < 1 {
		t.Errorf("agentd_goaways_total = %v, want one per connection (>= 1)", v)
	}
	agent.WaitLog(t, "connecting to kasd failed") // it keeps trying

	// Restart on the same --data-dir: same CA, so the agent (which read ca.pem once, at start)
	// reconnects by itself.
	kasd = kasd.Restart(t)
	if !bytes.Equal(readFile(t, kasd.CAFile()), ca) {
		t.Fatal("kasd replaced ca.pem on restart")
	}
	agent.WaitConnected(t)
	if r := get(t, url, jwt); r.Status != 200 {
		t.Fatalf("after restart: %d %s", r.Status, r.Body)
	}

	// SIGKILL, no drain: the restarted kasd has the same stateless reset key, so the agent's next
	// packet (a keep-alive) to the old connection gets a stateless reset and it reconnects at
	// once, instead of waiting for the idle timeout.
	line := lastLine(agent.Proc, "connection to kasd ended")
	kasd.Kill()
	killed := time.Now()
	kasd = kasd.Restart(t)
	waitFor(t, "agentd notices that kasd was killed", func() bool {
		l := lastLine(agent.Proc, "connection to kasd ended")
		if l != line {
			line = l
			return true
		}
		return false
	})
	// quic-go answers only packets larger than 42 bytes with a stateless reset; the patched
	// quic-go pads a keep-alive PING to 43 (third_party/README.md, change 12), upstream's is ~25.
	if !strings.Contains(line, "stateless reset") {
		t.Errorf("agentd did not get a stateless reset from the restarted kasd: %s", line)
	}
	agent.WaitConnected(t) // the slot is cleared before that line is logged
	t.Logf("agent reconnected %v after SIGKILL of kasd (%s)", time.Since(killed).Round(time.Millisecond), line)
	if r := get(t, url, jwt); r.Status != 200 {
		t.Fatalf("after SIGKILL and restart: %d %s", r.Status, r.Body)
	}

	if code := agent.Stop(t); code != 0 {
		t.Errorf("agentd exit code %d after SIGTERM", code)
	}
	if code := kasd.Stop(t); code != 0 {
		t.Errorf("kasd exit code %d after SIGTERM", code)
	}
}

// TestQuickstartScriptSafeDefaults runs quickstart.sh as a user would from a checkout, with a
// state directory of their choosing, and checks the safe defaults it promises: nothing is
// written to the working directory, the secrets, token and kasd's data (its generated peer
// secret included) are in $STATE with owner-only permissions, and every address kasd listened
// on (agents, API, observability, peers, the embedded etcd) is on loopback. Only the ports are
// chosen by the test (PEER_PORT, not a --peer-listen flag: the script must bind the peer port
// itself).
func TestQuickstartScriptSafeDefaults(t *testing.T) {
	skipShort(t)
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl (the quickstart uses it)")
	}
	script, err := filepath.Abs("quickstart.sh")
	if err != nil {
		t.Fatal(err)
	}
	port := func(network string) string {
		_, p, _ := net.SplitHostPort(freeAddr(t, network))
		return p
	}
	checkout, state := t.TempDir(), filepath.Join(t.TempDir(), "qkas-state")
	env := []string{
		"BIN=" + binDir,
		"STATE=" + state,
		"AGENT_PORT=" + port("udp"),
		"API_PORT=" + port("tcp"),
		"KASD_OBS_PORT=" + port("tcp"),
		"AGENT_OBS_PORT=" + port("tcp"),
		"PEER_PORT=" + port("udp"),
		// Free ports instead of 2379/2380, which another test or a developer's etcd may hold;
		// the default host is loopback too.
		"KASD_FLAGS=--embedded-etcd-listen " + freeAddr(t, "tcp") + " --embedded-etcd-peer-listen " + freeAddr(t, "tcp"),
		"AGENTD_FLAGS=--gitlab-proxy-listen " + freeAddr(t, "tcp"),
	}
	p := startProc(t, "quickstart.sh", checkout, env, bash, script)
	select {
	case <-p.Done():
	case <-time.After(2 * readyTimeout):
		t.Fatalf("quickstart.sh still running after %v", 2*readyTimeout)
	}
	if code := p.ExitCode(); code != 0 {
		t.Fatalf("quickstart.sh exit code %d:\n%s", code, p.Log())
	}
	if !strings.Contains(p.Log(), "== quickstart ok") {
		t.Fatalf("quickstart.sh output:\n%s", p.Log())
	}

	if entries, _ := os.ReadDir(checkout); len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("quickstart.sh wrote %v in the working directory", names)
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory: %v, %v; want it kept, mode 0700", fi, err)
	}
	for _, f := range []string{"jwt.secret", "demo.token", "kasd-data/peer.secret", "kasd-data/ca-key.pem"} {
		fi, err := os.Stat(filepath.Join(state, f))
		if err != nil {
			t.Errorf("$STATE/%s: %v", f, err)
			continue
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("$STATE/%s has mode %v, want owner-only", f, fi.Mode().Perm())
		}
	}

	// kasd logs every address it bound; each must be on loopback.
	log := readFile(t, filepath.Join(state, "kasd.log"))
	seen := map[string]string{}
	for _, line := range bytes.Split(log, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		for k, v := range m {
			switch v := v.(type) {
			case string:
				if strings.HasSuffix(k, "_listen") {
					seen[k] = v
				}
			case []any: // the embedded etcd's endpoints
				if k == "endpoints" {
					for _, e := range v {
						u, _ := url.Parse(e.(string))
						seen["etcd "+e.(string)] = u.Host
					}
				}
			}
		}
	}
	for _, k := range []string{"agent_listen", "api_listen", "observability_listen", "peer_listen"} {
		if _, ok := seen[k]; !ok {
			t.Errorf("kasd.log has no %s: %v", k, seen)
		}
	}
	for k, addr := range seen {
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			t.Errorf("kasd listened on %s = %q, not on loopback", k, addr)
		}
	}
	t.Logf("kasd's addresses: %v", seen)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// lastLine returns the last line of p's log containing substr, or "".
func lastLine(p *Proc, substr string) string {
	lines := strings.Split(p.Log(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}
