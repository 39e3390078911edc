// Command demo runs a local qkas fleet from the binaries in bin/: an embedded etcd (inside the
// first kasd), two kasd processes, one agentd connected to the first, and a sample in-cluster
// service. It sends requests through both kasd — the local route and the forwarded route — and
// directly, prints status and latency percentiles for each, and shuts everything down. With
// DEMO_KEEP=1 it stays up and prints curl lines to try. `make demo` runs it.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan error
}

func run(ctx context.Context) error {
	bin := flag.String("bin", "bin", "directory with kasd, agentd and kasctl")
	n := flag.Int("n", 300, "requests per route")
	flag.Parse()
	keep := os.Getenv("DEMO_KEEP") == "1"

	dir, err := os.MkdirTemp("", "qkas-demo-")
	if err != nil {
		return err
	}
	var procs []*proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			stopProc(procs[i])
		}
		if !keep {
			os.RemoveAll(dir)
		}
	}()
	kasctl := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(*bin, "kasctl"), args...).Output()
		return strings.TrimSpace(string(out)), err
	}
	// startBin starts the program at path; start starts one of ours from -bin.
	startBin := func(name, path string, args ...string) (*proc, error) {
		p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan error, 1)}
		f, err := os.Create(p.log)
		if err != nil {
			return nil, err
		}
		p.cmd = exec.Command(path, args...)
		p.cmd.Stdout, p.cmd.Stderr = f, f
		if err := p.cmd.Start(); err != nil {
			return nil, err
		}
		go func() { p.done <- p.cmd.Wait(); f.Close() }()
		procs = append(procs, p)
		return p, nil
	}
	start := func(name string, args ...string) (*proc, error) {
		return startBin(name, filepath.Join(*bin, strings.Split(name, "-")[0]), args...)
	}
	file := func(name string) string { return filepath.Join(dir, name) }

	// Secrets and the agent's token, made with kasctl as an operator would.
	for _, s := range []string{"jwt.secret", "peer.secret"} {
		if _, err := kasctl("secret", "-o", file(s)); err != nil {
			return fmt.Errorf("kasctl secret: %w", err)
		}
	}
	if _, err := kasctl("agent-token", "demo", "--token-out", file("demo.token"), "--tokens-file", file("tokens.yaml")); err != nil {
		return fmt.Errorf("kasctl agent-token: %w", err)
	}

	// The sample in-cluster service: a 1 KiB answer.
	svcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	payload := strings.Repeat("q", 1024)
	svc := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, payload)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = svc.Serve(svcLn) }()
	defer svc.Close()

	ports, err := freePorts(11)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer := fmt.Sprintf("127.0.0.1:%d", ports[8]), fmt.Sprintf("127.0.0.1:%d", ports[9])
	type kas struct{ agent, api, peer, obs string }
	kases := []kas{}
	for i := range 2 {
		k := kas{
			agent: fmt.Sprintf("127.0.0.1:%d", ports[4*i]), api: fmt.Sprintf("127.0.0.1:%d", ports[4*i+1]),
			peer: fmt.Sprintf("127.0.0.1:%d", ports[4*i+2]), obs: fmt.Sprintf("127.0.0.1:%d", ports[4*i+3]),
		}
		kases = append(kases, k)
		name := fmt.Sprintf("kasd-%d", i+1)
		if _, err := start(name,
			"--instance-id", name, "--data-dir", file(name),
			"--agent-listen", k.agent, "--api-listen", k.api, "--peer-listen", k.peer, "--observability-listen", k.obs,
			"--agent-tokens-file", file("tokens.yaml"), "--api-jwt-secret-file", file("jwt.secret"),
			// One named fleet; every port above and the embedded etcd's on loopback, every
			// secret in the temporary state directory, never in the checkout.
			"--peer-secret-file", file("peer.secret"), "--fleet-id", "demo", "--log-format", "json",
			"--embedded-etcd-listen", etcdClient, "--embedded-etcd-peer-listen", etcdPeer,
		); err != nil {
			return err
		}
		// The first kasd starts the embedded etcd; the second joins it once it is up.
		if err := waitHTTP(ctx, "http://"+k.obs+"/readyz", 60*time.Second); err != nil {
			return fmt.Errorf("%s did not become ready (log: %s): %w\n%s", name, file(name+".log"), err, tail(file(name+".log")))
		}
		fmt.Printf("started %s: agents udp://%s, API http://%s, peers udp://%s\n", name, k.agent, k.api, k.peer)
	}
	agentArgs := []string{
		"--kas-address", kases[0].agent, "--token-file", file("demo.token"),
		"--ca-file", filepath.Join(file("kasd-1"), "ca.pem"), "--service", "web=http://" + svcLn.Addr().String(),
		"--observability-listen", "127.0.0.1:0", "--gitlab-proxy-listen", "", "--log-format", "json",
	}
	// With DEMO_KEEP=1, a Prometheus (Debian's prometheus, when installed) scraping both kasd sits
	// behind the agent as service "prometheus", so that the web page's graph view has data.
	promBin, _ := exec.LookPath("prometheus")
	if keep && promBin != "" {
		promAddr := fmt.Sprintf("127.0.0.1:%d", ports[10])
		cfg := fmt.Sprintf("global:\n  scrape_interval: 2s\nscrape_configs:\n  - job_name: kasd\n    static_configs:\n      - targets: ['%s', '%s']\n  - job_name: prometheus\n    static_configs:\n      - targets: ['%s']\n",
			kases[0].obs, kases[1].obs, promAddr)
		if err := os.WriteFile(file("prometheus.yml"), []byte(cfg), 0o644); err != nil {
			return err
		}
		if _, err := startBin("prometheus", promBin, "--config.file", file("prometheus.yml"),
			"--storage.tsdb.path", file("prom-data"), "--web.listen-address", promAddr); err != nil {
			return err
		}
		if err := waitHTTP(ctx, "http://"+promAddr+"/-/ready", 60*time.Second); err != nil {
			return fmt.Errorf("prometheus did not become ready: %w\n%s", err, tail(file("prometheus.log")))
		}
		agentArgs = append(agentArgs, "--service", "prometheus=http://"+promAddr)
		fmt.Printf("started prometheus: http://%s, behind the agent as service \"prometheus\"\n", promAddr)
	}
	if _, err := start("agentd", agentArgs...); err != nil {
		return err
	}
	jwt, err := kasctl("jwt", "--secret-file", file("jwt.secret"), "--agents", "demo", "--ttl", "1h")
	if err != nil {
		return fmt.Errorf("kasctl jwt: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, TLSClientConfig: &tls.Config{}}, Timeout: 10 * time.Second}
	routes := []struct{ name, url string }{
		{"direct", "http://" + svcLn.Addr().String() + "/"},
		{"local (kasd-1)", "http://" + kases[0].api + "/api/v1/agents/demo/proxy/web/"},
		{"forwarded (kasd-2 -> kasd-1)", "http://" + kases[1].api + "/api/v1/agents/demo/proxy/web/"},
	}
	// Wait until the agent is reachable through both kasd (the second learns of it from etcd).
	for _, r := range routes[1:] {
		if err := waitOK(ctx, client, r.url, jwt, 30*time.Second); err != nil {
			return fmt.Errorf("route %s: %w\nagentd log:\n%s", r.name, err, tail(file("agentd.log")))
		}
	}
	fmt.Printf("\n%d sequential 1 KiB GETs per route, interleaved:\n\n", *n)
	lat := make([][]time.Duration, len(routes))
	status := make([]map[int]int, len(routes))
	for i := range status {
		status[i] = map[int]int{}
	}
	for range *n {
		for i, r := range routes {
			code, d := get(client, r.url, jwt)
			status[i][code]++
			lat[i] = append(lat[i], d)
		}
	}
	fmt.Printf("%-30s %-14s %9s %9s %9s %12s\n", "route", "status", "p50", "p90", "p99", "added p50")
	base := pct(lat[0], 50)
	for i, r := range routes {
		p50 := pct(lat[i], 50)
		added := "-"
		if i > 0 {
			added = fmt.Sprintf("+%v", (p50 - base).Round(time.Microsecond))
		}
		fmt.Printf("%-30s %-14s %9v %9v %9v %12s\n", r.name, fmtStatus(status[i]), p50.Round(time.Microsecond),
			pct(lat[i], 90).Round(time.Microsecond), pct(lat[i], 99).Round(time.Microsecond), added)
	}
	printWebPage(os.Stdout, keep, kases[1].api, jwt)
	if keep {
		if promBin == "" {
			fmt.Printf("(Install Debian's prometheus for a Prometheus behind the agent and live graphs on the page.)\n")
		} else {
			fmt.Printf("Graph view: agent demo, service prometheus, a query such as rate(process_cpu_seconds_total[30s]) (kasd and Prometheus CPU).\n")
		}
		fmt.Printf("\nThe fleet stays up (DEMO_KEEP=1). Try:\n\n")
		fmt.Printf("  export QKAS_JWT=%s\n", jwt)
		fmt.Printf("  curl -H \"Authorization: Bearer $QKAS_JWT\" http://%s/api/v1/agents\n", kases[1].api)
		fmt.Printf("  curl -H \"Authorization: Bearer $QKAS_JWT\" %s\n", routes[2].url)
		fmt.Printf("  curl http://%s/metrics | grep kasd_requests_total\n", kases[1].obs)
		fmt.Printf("\nLogs and state are in %s (kept after Ctrl-C, for the logs: remove it when done).\nCtrl-C stops everything.\n", dir)
		<-ctx.Done()
	}
	fmt.Println("\nshutting down")
	return nil
}

// printWebPage prints the URL of the fleet's web page, only when the fleet stays up to serve it
// (DEMO_KEEP=1): otherwise the demo shuts down at once and the URL would be dead when read.
func printWebPage(w io.Writer, keep bool, apiAddr, jwt string) {
	if !keep {
		fmt.Fprintf(w, "\n(Run with DEMO_KEEP=1 to keep the fleet up and get the URL of its web page.)\n")
		return
	}
	// The token rides in the URL fragment, which the browser never sends; the page keeps it in
	// the tab's sessionStorage and takes it out of the address bar.
	fmt.Fprintf(w, "\nWeb page of the fleet (kasd-2's view; the token is valid for 1h):\n  http://%s/ui/#token=%s\n", apiAddr, jwt)
}

func get(c *http.Client, url, jwt string) (int, time.Duration) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+jwt)
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, time.Since(start)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

func waitOK(ctx context.Context, c *http.Client, url, jwt string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		code, _ := get(c, url, jwt)
		if code == 200 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("last status %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("timed out")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stopProc(p *proc) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s exited: %v\n%s", p.name, err, tail(p.log))
		}
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		fmt.Fprintf(os.Stderr, "%s did not stop within 15s; killed\n", p.name)
	}
}

func freePorts(n int) ([]int, error) {
	var out []int
	for len(out) < n {
		// A port free for both TCP and UDP, since kasd uses UDP for agents and peers.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		if !slices.Contains(out, port) {
			out = append(out, port)
		}
	}
	return out, nil
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, len(s)*p/100)]
}

func fmtStatus(m map[int]int) string {
	var parts []string
	for code, n := range m {
		parts = append(parts, fmt.Sprintf("%d×%d", n, code))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n") + "\n"
}
