package kasd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// startTCP opens kasd's TCP agent listener (QUIC carried over TLS/TCP) on addr and serves it
// until the test ends.
func (e *env) startTCP(addr string) *quic.TCPListener {
	t := e.t
	t.Helper()
	c, _, err := quic.DevCertificate(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenTCP(addr, quic.ServerTLSConfig(c, api.ALPNAgent), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := e.server()
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.ServeAgentsTCP(context.Background(), ln) })
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln
}

func tcpPort(ln *quic.TCPListener) int { return ln.Addr().(*net.TCPAddr).Port }

// transportServices are the services the transport tests call: an echo, a body hasher and a
// WebSocket echo.
func transportServices(t *testing.T) map[string]string {
	svcs, _ := transportServicesCounted(t)
	return svcs
}

// transportServicesCounted is transportServices, with the count of requests that reached the
// slow service (which answers after 500ms).
func transportServicesCounted(t *testing.T) (map[string]string, *atomic.Int32) {
	var arrived atomic.Int32
	hash := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	}))
	t.Cleanup(hash.Close)
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	t.Cleanup(ws.Close)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		time.Sleep(500 * time.Millisecond)
		io.WriteString(w, "slow ok")
	}))
	t.Cleanup(slow.Close)
	return map[string]string{"web": echoService(t, "web").URL, "hash": hash.URL, "ws": ws.URL, "slow": slow.URL}, &arrived
}

// checkRequests makes a GET, a POST with a streamed 4 MiB body and a WebSocket exchange
// through kasd to agent id.
func checkRequests(t *testing.T, e *env, id string) {
	t.Helper()
	resp := e.do("GET", "/api/v1/agents/"+id+"/proxy/web/x?y=1", nil)
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.HasPrefix(body, "GET /x?y=1") {
		t.Errorf("GET: %d %q", resp.StatusCode, body)
	}

	const size = 4 << 20
	pr, pw := io.Pipe()
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	go func() { // ends when the body is written or the request fails (CloseWithError)
		for i := 0; i < size; i += 64 << 10 {
			if _, err := pw.Write(payload[i : i+64<<10]); err != nil {
				return
			}
		}
		pw.Close()
	}()
	resp = e.do("POST", "/api/v1/agents/"+id+"/proxy/hash/", pr)
	pr.CloseWithError(io.ErrClosedPipe)
	sum := sha256.Sum256(payload)
	if body := readAll(t, resp); resp.StatusCode != 200 || body != fmt.Sprintf("%d %s", size, hex.EncodeToString(sum[:])) {
		t.Errorf("POST streamed body: %d %q", resp.StatusCode, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hdr := http.Header{"Authorization": {"Bearer " + e.token()}}
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.url("/api/v1/agents/"+id+"/proxy/ws/socket"), "http"), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Errorf("WebSocket: %v", err)
		return
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Errorf("WebSocket write: %v", err)
		return
	}
	if _, got, err := c.Read(ctx); err != nil || string(got) != "echo: hi" {
		t.Errorf("WebSocket read: %q %v", got, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// agentTransports returns the transport of each of the agent's connections, from GET
// /api/v1/agents.
func agentTransports(t *testing.T, e *env, id string) []string {
	t.Helper()
	resp := e.do("GET", "/api/v1/agents", nil)
	var list struct {
		Agents []kasd.AgentInfo `json:"agents"`
	}
	if err := json.Unmarshal([]byte(readAll(t, resp)), &list); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range list.Agents {
		if a.ID == id {
			for _, c := range a.Connections {
				out = append(out, c.Transport)
			}
		}
	}
	return out
}

// Over the TCP transport everything works as over QUIC: GET, a streamed POST, WebSocket, the
// modules endpoint; kasd lists and counts the connection as tcp; a drain loses nothing.
func TestAgentOverTCP(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-tcp", gitlab.AgentInfo{AgentID: 401})
	tcpLn := e.startTCP("127.0.0.1:0")
	reg := prometheus.NewRegistry()
	svcs, arrived := transportServicesCounted(t)
	a := e.startAgent("tok-tcp", "pod-1", svcs, func(c *agentd.Config) {
		c.Registerer = reg
		c.Transport = agentd.TransportConfig{Mode: agentd.TransportTCP, TCPPort: tcpPort(tcpLn)}
	})
	waitConnected(t, a, 1)
	if got := agentTransports(t, e.env, "401"); len(got) != 1 || got[0] != "tcp" {
		t.Fatalf("GET /api/v1/agents: transports %v, want [tcp]", got)
	}
	if n := counter(t, e.reg, "kasd_agent_connections", map[string]string{"transport": "tcp"}); n != 1 {
		t.Errorf("kasd_agent_connections{transport=tcp} = %v, want 1", n)
	}
	if n := counter(t, reg, "agentd_transport_connections", map[string]string{"transport": "tcp"}); n != 1 {
		t.Errorf("agentd_transport_connections{transport=tcp} = %v, want 1", n)
	}
	checkRequests(t, e.env, "401")

	// The modules endpoint (agent → kasd → GitLab) over TCP.
	proxy := httptest.NewServer(a.GitLabHandler())
	defer proxy.Close()
	resp, err := noFollow.Get(proxy.URL + "/modules/echo/a?x=1")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, `"agent_id":401`) {
		t.Errorf("modules endpoint: %d %s", resp.StatusCode, body)
	}

	// Drain with requests in flight on the TCP connection: every one completes.
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 20 {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", e.url("/api/v1/agents/401/proxy/slow/"), nil)
			req.Header.Set("Authorization", "Bearer "+e.token())
			resp, err := e.client.Do(req)
			if err != nil {
				failed.Add(1)
				return
			}
			if body := readAll(t, resp); resp.StatusCode != 200 || body != "slow ok" {
				failed.Add(1)
				t.Errorf("request in flight across the drain: %d %s", resp.StatusCode, body)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for arrived.Load() < 20 && time.Now().Before(deadline) { // every request is at the service
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.server().Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of 20 requests in flight failed across the drain of an agent on TCP", n)
	}
}

// dialUDPInNetns opens a connected UDP socket in the network namespace at path, from a thread
// of its own (retired afterwards: it stays in the namespace).
func dialUDPInNetns(path string, raddr *net.UDPAddr) (*net.UDPConn, error) {
	return udpInNetns(path, func() (*net.UDPConn, error) { return net.DialUDP("udp", nil, raddr) })
}

// netnsSockets opens UDP sockets in the network namespace at its path (quic.Config.Sockets).
type netnsSockets string

func (p netnsSockets) ListenUDP() (*net.UDPConn, error) {
	return udpInNetns(string(p), func() (*net.UDPConn, error) { return net.ListenUDP("udp", &net.UDPAddr{}) })
}

// udpInNetns runs open on a thread of its own in the network namespace at path.
func udpInNetns(path string, open func() (*net.UDPConn, error)) (*net.UDPConn, error) {
	type result struct {
		c   *net.UDPConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread leaves with the goroutine
		ns, err := os.Open(path)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := open()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// inNetns runs f on a thread switched into the network namespace at path and switches back.
// Sockets made in f belong to the namespace for their whole life.
func inNetns(t *testing.T, path string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err) // the thread stays locked and is retired with the goroutine
	}
	runtime.UnlockOSThread()
}

// startAgentInNetns runs an agent whose UDP socket lives in the namespace at nsPath (Run opens
// it first thing); its TCP connections are made from the test's own namespace. The thread
// that runs Run stays in the namespace and is retired with the goroutine.
func (e *env) startAgentInNetns(nsPath, id string, services map[string]string, mod func(*agentd.Config)) *agentd.Agent {
	t := e.t
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	svcs := map[string]*url.URL{}
	for name, raw := range services {
		svcs[name], _ = url.Parse(raw)
	}
	tok := e.tokens[id]
	if tok == "" {
		tok = id
	}
	cfg := agentd.Config{
		KasAddresses: []string{e.agentUDP}, Token: tok, TLS: tlsConf, Services: svcs, Replica: "pod-" + id,
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout: 2 * time.Second,
	}
	mod(&cfg)
	cfg.Transport.DialUDPProbe = func(raddr *net.UDPAddr) (*net.UDPConn, error) { return dialUDPInNetns(nsPath, raddr) }
	cfg.QUIC.Sockets = netnsSockets(nsPath) // each connection's socket, opened when it is dialled
	a, err := agentd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	entered := make(chan error, 1)
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread leaves with the goroutine
		ns, err := os.Open(nsPath)
		if err == nil {
			err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
			ns.Close()
		}
		entered <- err
		if err == nil {
			_ = a.Run(ctx)
		}
	}()
	if err := <-entered; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// tinyproxy starts Debian's tinyproxy on a free loopback port with basic auth user:pass and
// returns its URL (without credentials) and its log file; "" when the binary is missing.
func tinyproxy(t *testing.T) (string, string) {
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		for _, p := range []string{"/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		return "", ""
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir, err := os.MkdirTemp("", "qkas-tinyproxy-") // not under t.TempDir: tinyproxy runs as nobody
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	logFile := filepath.Join(dir, "tinyproxy.log")
	conf := fmt.Sprintf("Port %d\nListen 127.0.0.1\nTimeout 60\nLogFile %q\nLogLevel Connect\nMaxClients 50\nAllow 127.0.0.1\nBasicAuth user pass\nUser nobody\nGroup nogroup\n", port, logFile)
	confFile := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", confFile)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tinyproxy did not start: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port), logFile
}

// The fallback and the return, in a network namespace whose nftables drops the UDP packets to
// kasd's QUIC port: an auto agent is connected over TCP within the fallback time and serves
// GET, a streamed POST and WebSocket; one through tinyproxy (basic auth) too, while one with
// a wrong proxy password says proxy_auth_required; a --transport quic agent never falls back.
// Then UDP is let through again: the auto agents are back on QUIC within the probe interval
// while 100+ requests run, none failing.
func TestAgentFallbackAndReturn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	proxyURL, proxyLog := tinyproxy(t)
	if proxyURL == "" {
		t.Log("tinyproxy not installed (apt-get install tinyproxy): the proxy cases are not run")
	}
	name := fmt.Sprintf("qkas-fallback-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "set", "lo", "up")
	nsPath := "/run/netns/" + name

	e := newEnv(t)
	// kasd's QUIC listener inside the namespace (where the agents' UDP sockets are), its TCP
	// listener outside (where the agents' TCP connections are made).
	e.ln.Close()
	e.server().Close()
	e.serveWG.Wait()
	inNetns(t, nsPath, func() { e.startKasd("127.0.0.1:0") })
	tcpLn := e.startTCP("127.0.0.1:0")
	udpPort := e.ln.Addr().(*net.UDPAddr).Port
	run("ip", "netns", "exec", name, "nft", fmt.Sprintf(
		"add table inet qkas; add chain inet qkas in { type filter hook input priority 0; }; add rule inet qkas in udp dport %d drop", udpPort))

	const fallbackAfter, probeInterval = time.Second, 2 * time.Second
	svcs := transportServices(t)
	regs := map[string]*prometheus.Registry{}
	start := func(id string, tc agentd.TransportConfig) *agentd.Agent {
		reg := prometheus.NewRegistry()
		regs[id] = reg
		tc.TCPPort = tcpPort(tcpLn)
		return e.startAgentInNetns(nsPath, id, svcs, func(c *agentd.Config) { c.Registerer = reg; c.Transport = tc })
	}
	began := time.Now()
	auto := start("alpha", agentd.TransportConfig{Mode: agentd.TransportAuto, FallbackAfter: fallbackAfter, ProbeInterval: probeInterval})
	quicOnly := start("beta", agentd.TransportConfig{Mode: agentd.TransportQUIC, FallbackAfter: fallbackAfter})
	viaProxy := auto // without tinyproxy, gamma is one more auto agent, without a proxy
	loaded := []string{"alpha"}
	if proxyURL != "" {
		proxyURLWithAuth, _ := url.Parse(strings.Replace(proxyURL, "http://", "http://user:pass@", 1))
		viaProxy = start("gamma", agentd.TransportConfig{Mode: agentd.TransportAuto, FallbackAfter: fallbackAfter, ProbeInterval: probeInterval,
			Proxy: func(*url.URL) (*url.URL, error) { return proxyURLWithAuth, nil }})
		badURL, _ := url.Parse(strings.Replace(proxyURL, "http://", "http://user:wrong@", 1))
		start("delta", agentd.TransportConfig{Mode: agentd.TransportTCP, Proxy: func(*url.URL) (*url.URL, error) { return badURL, nil }})
		loaded = append(loaded, "gamma")
	}

	waitConnected(t, auto, 1)
	fellBack := time.Since(began)
	t.Logf("fallback: connected over %s %v after start (fallback time %v)", auto.Transport(), fellBack, fallbackAfter)
	if auto.Transport() != "tcp" || fellBack > fallbackAfter+5*time.Second {
		t.Errorf("auto agent on %s after %v, want tcp within about %v", auto.Transport(), fellBack, fallbackAfter)
	}
	if n := counter(t, regs["alpha"], "agentd_transport_fallbacks_total", map[string]string{"reason": "handshake_timeout"}); n < 1 {
		t.Errorf("agentd_transport_fallbacks_total{reason=handshake_timeout} = %v", n)
	}
	checkRequests(t, e, "alpha")

	if proxyURL != "" {
		waitConnected(t, viaProxy, 1)
		checkRequests(t, e, "gamma")
		if b, _ := os.ReadFile(proxyLog); !bytes.Contains(b, []byte("CONNECT")) {
			t.Errorf("tinyproxy's log shows no CONNECT:\n%s", b)
		}
		waitCounter(t, regs["delta"], "agentd_connect_failures_total", map[string]string{"code": "proxy_auth_required"}, 1)
	}

	if quicOnly.Connected() != 0 || counter(t, regs["beta"], "agentd_transport_fallbacks_total", nil) != 0 {
		t.Errorf("--transport quic agent: %d connections, %v fallbacks; want none", quicOnly.Connected(),
			counter(t, regs["beta"], "agentd_transport_fallbacks_total", nil))
	}
	if got := agentTransports(t, e, "beta"); len(got) != 0 {
		t.Errorf("--transport quic agent connected over %v with UDP blocked", got)
	}

	// Let UDP through again, under load: every request succeeds, and the auto agents move back.
	var wg sync.WaitGroup
	var ok, failed atomic.Int32
	stop := make(chan struct{})
	for w := range 6 {
		id := loaded[w%len(loaded)]
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", e.url("/api/v1/agents/"+id+"/proxy/web/load"), nil)
				req.Header.Set("Authorization", "Bearer "+e.token())
				resp, err := e.client.Do(req)
				if err != nil {
					failed.Add(1)
					t.Errorf("request to %s: %v", id, err)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					t.Errorf("request to %s: %d %s", id, resp.StatusCode, body)
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	run("ip", "netns", "exec", name, "nft", "delete table inet qkas")
	opened := time.Now()
	deadline := opened.Add(probeInterval*5/4 + 2*fallbackAfter + 5*time.Second)
	var returned time.Duration
	for {
		a, g := agentTransports(t, e, "alpha"), agentTransports(t, e, loaded[len(loaded)-1])
		if len(a) == 1 && a[0] == "quic" && len(g) == 1 && g[0] == "quic" {
			returned = time.Since(opened)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("not back on QUIC %v after UDP was let through: alpha %v, gamma %v", time.Since(opened), a, g)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for ok.Load() < 100 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("return: both auto agents back on QUIC %v after UDP was let through (probe interval %v ±25%%); %d requests ok, %d failed", returned, probeInterval, ok.Load(), failed.Load())
	if ok.Load() < 100 {
		t.Errorf("only %d requests completed during the return", ok.Load())
	}
	if n := counter(t, regs["alpha"], "agentd_transport_returns_total", nil); n < 1 {
		t.Errorf("agentd_transport_returns_total = %v, want >= 1", n)
	}
	// kasd saw the successful probes as probes, not as agents that failed their handshake.
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "probe"}); n < 1 {
		t.Errorf("kasd_agent_connections_total{result=probe} = %v, want >= 1", n)
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "handshake_timeout"}); n != 0 {
		t.Errorf("kasd_limit_rejections_total{reason=handshake_timeout} = %v: probes were counted as refused handshakes", n)
	}
	waitConnected(t, quicOnly, 1) // and the quic-only agent connects once UDP passes
}

// When the network refuses UDP (here nftables rejects the packets to kasd's QUIC port with ICMP
// port unreachable), an auto agent does not wait out the fallback time: it is on TCP at once,
// counted as udp_unreachable, and serves requests.
func TestAgentFallbackOnUDPReject(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	name := fmt.Sprintf("qkas-reject-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "set", "lo", "up")
	nsPath := "/run/netns/" + name

	e := newEnv(t)
	e.ln.Close()
	e.server().Close()
	e.serveWG.Wait()
	inNetns(t, nsPath, func() { e.startKasd("127.0.0.1:0") })
	tcpLn := e.startTCP("127.0.0.1:0")
	udpPort := e.ln.Addr().(*net.UDPAddr).Port
	run("ip", "netns", "exec", name, "nft", fmt.Sprintf(
		"add table inet qkas; add chain inet qkas in { type filter hook input priority 0; }; add rule inet qkas in udp dport %d reject", udpPort))

	const fallbackAfter = time.Minute // never reached: the refusal decides
	reg := prometheus.NewRegistry()
	began := time.Now()
	a := e.startAgentInNetns(nsPath, "alpha", transportServices(t), func(c *agentd.Config) {
		c.Registerer = reg
		c.Transport = agentd.TransportConfig{Mode: agentd.TransportAuto, FallbackAfter: fallbackAfter, ProbeInterval: time.Hour, TCPPort: tcpPort(tcpLn)}
	})
	waitConnected(t, a, 1)
	took := time.Since(began)
	t.Logf("UDP refused: connected over %s %v after start (fallback time %v)", a.Transport(), took, fallbackAfter)
	if a.Transport() != "tcp" || took > 20*time.Second {
		t.Errorf("agent on %s after %v, want tcp well before the fallback time %v", a.Transport(), took, fallbackAfter)
	}
	if n := counter(t, reg, "agentd_transport_fallbacks_total", map[string]string{"reason": "udp_unreachable"}); n < 1 {
		t.Errorf("agentd_transport_fallbacks_total{reason=udp_unreachable} = %v", n)
	}
	checkRequests(t, e, "alpha")
}
