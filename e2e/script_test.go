package e2e

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickstartScript runs quickstart.sh, the script the README's quickstart is taken from, on
// free ports with the binaries under test, and checks that it succeeds and prints what the README
// says it prints.
func TestQuickstartScript(t *testing.T) {
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
	tmp, apiPort := t.TempDir(), port("tcp")
	env := []string{
		"BIN=" + binDir,
		"TMPDIR=" + tmp,
		"AGENT_PORT=" + port("udp"),
		"API_PORT=" + apiPort,
		"KASD_OBS_PORT=" + port("tcp"),
		"AGENT_OBS_PORT=" + port("tcp"),
	}
	// Daemons with newer flags would use their default ports (peer, embedded etcd, GitLab proxy),
	// which other tests or a developer's own daemons may hold: give them free ones.
	var kasdFlags []string
	if hasFlag(t, "kasd", "peer-listen") {
		kasdFlags = append(kasdFlags, "--peer-listen", freeAddr(t, "udp"))
	}
	if hasFlag(t, "kasd", "embedded-etcd-listen") {
		kasdFlags = append(kasdFlags, "--embedded-etcd-listen", freeAddr(t, "tcp"), "--embedded-etcd-peer-listen", freeAddr(t, "tcp"))
	}
	env = append(env, "KASD_FLAGS="+strings.Join(kasdFlags, " "))
	if hasFlag(t, "agentd", "gitlab-proxy-listen") {
		env = append(env, "AGENTD_FLAGS=--gitlab-proxy-listen "+freeAddr(t, "tcp"))
	}
	p := startProc(t, "quickstart.sh", t.TempDir(), env, bash, script)
	select {
	case <-p.Done():
	case <-time.After(2 * readyTimeout):
		t.Fatalf("quickstart.sh still running after %v", 2*readyTimeout)
	}
	out := p.Log()
	if code := p.ExitCode(); code != 0 {
		t.Fatalf("quickstart.sh exit code %d:\n%s", code, out)
	}
	for _, want := range []string{
		"== secrets",
		"written to demo.token",
		"== kasd",
		"== agentd",
		"== request through kasd",
		"ok\n",                      // /healthz of kasd, through the tunnel
		"kasd_connected_agents 1\n", // kasd's /metrics, through the tunnel
		`"id":"demo"`,               // GET /api/v1/agents
		"== quickstart ok",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("quickstart.sh output lacks %q:\n%s", want, out)
		}
	}
	// Its trap stopped the daemons and removed the work directory. (startProc's cleanup kills
	// anything left in the process group, but a user running the script has no such cleanup.)
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", apiPort), 5*time.Second); err == nil {
		c.Close()
		t.Error("kasd still listens after quickstart.sh exited")
	}
	if m, _ := filepath.Glob(filepath.Join(tmp, "qkas-quickstart.*")); len(m) != 0 {
		t.Errorf("quickstart.sh left %v behind", m)
	}
}
