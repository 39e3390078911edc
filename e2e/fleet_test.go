package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFleetRealEtcdPrometheus runs three kasd replicas against a real 3-member etcd cluster
// (Debian's etcd-server) with a real Prometheus (Debian's prometheus) as the agent's in-cluster
// service. It checks /api/v1/query and /api/v1/query_range through every kasd (local route on the
// kasd holding the agent, forwarded route on the others), then SIGKILLs the kasd holding the agent
// and measures how long until a request through another kasd succeeds again.
func TestFleetRealEtcdPrometheus(t *testing.T) {
	skipShort(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not on PATH (Debian package etcd-server; .ci/run installs it)")
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not on PATH (Debian package prometheus; .ci/run installs it)")
	}
	dir := t.TempDir()

	// --- a 3-member etcd cluster ---
	const etcdMembers = 3
	var names, clientURLs, peerURLs, initial []string
	for i := range etcdMembers {
		names = append(names, fmt.Sprintf("etcd%d", i+1))
		clientURLs = append(clientURLs, "http://"+freeAddr(t, "tcp"))
		peerURLs = append(peerURLs, "http://"+freeAddr(t, "tcp"))
		initial = append(initial, names[i]+"="+peerURLs[i])
	}
	etcds := make([]*Proc, etcdMembers)
	for i := range etcdMembers {
		etcds[i] = startGraceful(t, names[i], dir, nil, etcdBin,
			"--name", names[i],
			"--data-dir", filepath.Join(t.TempDir(), names[i]),
			"--listen-client-urls", clientURLs[i], "--advertise-client-urls", clientURLs[i],
			"--listen-peer-urls", peerURLs[i], "--initial-advertise-peer-urls", peerURLs[i],
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "qkas-e2e-"+filepath.Base(dir),
		)
	}
	for i := range etcdMembers {
		waitReady(t, etcds[i], clientURLs[i]+"/health") // 200 only once the cluster has a leader
	}
	if etcdctl, err := exec.LookPath("etcdctl"); err == nil {
		out, err := exec.Command(etcdctl, "--endpoints", strings.Join(clientURLs, ","), "endpoint", "health").CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl endpoint health: %v\n%s", err, out)
		}
	}

	// --- Prometheus scraping itself ---
	promAddr := freeAddr(t, "tcp")
	promURL := "http://" + promAddr
	writeFile(t, filepath.Join(dir, "prometheus.yml"), fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['%s']
`, promAddr))
	prom := startGraceful(t, "prometheus", dir, nil, promBin,
		"--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(t.TempDir(), "prom-data"),
		"--web.listen-address", promAddr,
	)
	waitReady(t, prom, promURL+"/-/ready")

	// --- three kasd replicas sharing the etcd cluster ---
	const agent = "prom-agent"
	sec := newSecrets(t, dir, agent)
	peerSecret := filepath.Join(dir, "peer.secret")
	kasctl(t, dir, "secret", "--out", peerSecret)
	kasds := make([]*Kasd, 3)
	for i := range kasds {
		name := fmt.Sprintf("kasd%d", i+1)
		kasds[i] = startKasd(t, KasdOpts{
			Dir:           dir,
			Name:          name,
			DataDir:       name + "-data",
			TokensFile:    sec.TokensFile,
			JWTSecretFile: sec.JWTSecretFile,
			Args: []string{
				"--fleet",
				"--etcd-endpoints", strings.Join(clientURLs, ","),
				"--peer-secret-file", peerSecret,
				"--instance-id", name,
				"--registry-ttl", "3s",
			},
		})
		gracefulStop(t, kasds[i].Proc)
	}
	// agentd trusts the development CAs of kasd1 and kasd2.
	caFile := filepath.Join(dir, "ca12.pem")
	var cas []byte
	for _, k := range kasds[:2] {
		b, err := os.ReadFile(k.CAFile())
		if err != nil {
			t.Fatal(err)
		}
		cas = append(cas, b...)
	}
	writeFile(t, caFile, string(cas))

	jwt := mintJWT(t, sec.JWTSecretFile, "--agents", agent)
	queryPath := "api/v1/query?query=up"
	rangePath := func() string {
		now := time.Now().Unix()
		return fmt.Sprintf("api/v1/query_range?query=up&start=%d&end=%d&step=15s", now-300, now)
	}
	// promOK GETs path on the prometheus service through k and returns "" when the answer is 200
	// with "status":"success", else a description of what came back.
	promOK := func(k *Kasd, path string) string {
		r, err := tryGet(k.ProxyURL(agent, "prometheus", path), jwt)
		if err != nil {
			return err.Error()
		}
		var body struct {
			Status string `json:"status"`
		}
		if r.Status != 200 || json.Unmarshal([]byte(r.Body), &body) != nil || body.Status != "success" {
			return fmt.Sprintf("%s: status %d, body %.300q", k.Name, r.Status, r.Body)
		}
		return ""
	}
	// waitAll polls until both queries succeed through every kasd in ks.
	waitAll := func(what string, ks []*Kasd, bound time.Duration) {
		t.Helper()
		deadline := time.Now().Add(bound)
		for _, k := range ks {
			for _, path := range []func() string{func() string { return queryPath }, rangePath} {
				for {
					p := path()
					msg := promOK(k, p)
					if msg == "" {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: %s %s does not succeed after %v: %s", what, k.Name, p, bound, msg)
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
		}
	}

	// --- phase 1: agentd on kasd1 only; every kasd reaches Prometheus ---
	services := map[string]string{"prometheus": promURL}
	a1 := startAgentd(t, AgentdOpts{
		Dir:       dir,
		Name:      "agentd1",
		KasAddrs:  []string{kasds[0].Opts.AgentAddr},
		TokenFile: sec.TokenFiles[agent],
		CAFile:    caFile,
		Services:  services,
		Args:      []string{"--gitlab-proxy-listen", "", "--kubernetes=false"},
	})
	gracefulStop(t, a1.Proc)
	waitAll("agentd on kasd1 only", kasds, 60*time.Second)
	t.Logf("query and query_range succeed through kasd1 (local) and kasd2, kasd3 (forwarded)")
	if code := a1.Stop(t); code != 0 {
		t.Errorf("agentd1 exited with %d after SIGTERM", code)
	}

	// --- phase 2: agentd knows kasd1 and kasd2; kill -9 kasd1 and time the failover ---
	a2 := startAgentd(t, AgentdOpts{
		Dir:       dir,
		Name:      "agentd2",
		KasAddrs:  []string{kasds[0].Opts.AgentAddr, kasds[1].Opts.AgentAddr},
		TokenFile: sec.TokenFiles[agent],
		CAFile:    caFile,
		Services:  services,
		Args:      []string{"--gitlab-proxy-listen", "", "--kubernetes=false"},
	})
	gracefulStop(t, a2.Proc)
	// The first address is dialled first: the agent is held by kasd1.
	waitFor(t, "kasd1 holds the agent", func() bool {
		v, _ := metric(t, kasds[0].ObsURL(), "kasd_agent_connections")
		return v >= 1
	})
	waitAll("agentd on kasd1 of kasd1,kasd2", kasds, 60*time.Second)

	start := time.Now()
	kasds[0].Kill()
	const bound = 20 * time.Second
	var last string
	for {
		if last = promOK(kasds[2], queryPath); last == "" {
			break
		}
		if time.Since(start) > bound {
			t.Fatalf("no successful request through kasd3 within %v of kill -9 kasd1; last: %s", bound, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	failover := time.Since(start)
	t.Logf("failover: kill -9 kasd1 -> query through kasd3 succeeds again after %v", failover.Round(time.Millisecond))
	waitAll("after failover", kasds[1:], 30*time.Second)
}

// startGraceful is startProc whose cleanup first sends SIGTERM and waits a bound before the
// harness SIGKILLs the process group.
func startGraceful(t *testing.T, name, dir string, env []string, binary string, args ...string) *Proc {
	t.Helper()
	p := startProc(t, name, dir, env, binary, args...)
	gracefulStop(t, p)
	return p
}

// gracefulStop registers a cleanup (run before startProc's SIGKILL, cleanups being LIFO) that sends
// SIGTERM and waits up to 10 s for the exit.
func gracefulStop(t *testing.T, p *Proc) {
	t.Cleanup(func() {
		if p.Exited() {
			return
		}
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Logf("%s did not exit within 10s of SIGTERM; SIGKILL", p.Name)
		}
	})
}
