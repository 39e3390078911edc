package suite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Timeouts given to kasd. Small, so that the kasd-stop bound (routeTimeout + headerTimeout) is
// measurable within a scenario.
const (
	routeTimeout  = 3 * time.Second
	headerTimeout = 5 * time.Second
	shutdownGrace = 10 * time.Second
	drainDelay    = 2 * time.Second // > the load balancer's readyz period and timeout
	agentDrain    = 5 * time.Second
	dialTimeout   = 2 * time.Second
	servicePort   = "8080"
)

// agentdObservabilityAddr is where each agentd, in its own namespace, serves /readyz and metrics.
const agentdObservabilityAddr = "127.0.0.1:8154"

// fleet is the processes and what is needed to reach them.
type fleet struct {
	cfg  Config
	nw   *network
	work string
	logs string
	bin  struct{ kasd, agentd, kasctl, etcd string }

	jwt        string
	client     *netns       // the load generator's namespace
	ctl        *http.Client // short requests (readyz, metrics, agent lists) from client
	etcd       []*etcdNode
	kasd       []*kasdNode
	agents     []*agentNode
	caBundle   string
	tokensFile string

	svcWG sync.WaitGroup // the services' Serve goroutines
}

type etcdNode struct {
	name string
	ns   *netns
	proc *proc
}

func (e *etcdNode) clientURL() string { return "http://" + e.ns.ip + ":2379" }

type kasdNode struct {
	id   string // instance id
	ns   *netns
	proc *proc
}

func (k *kasdNode) agentAddr() string      { return k.ns.ip + ":8150" }
func (k *kasdNode) apiURL(p string) string { return "http://" + k.ns.ip + ":8151" + p }
func (k *kasdNode) obsURL(p string) string { return "http://" + k.ns.ip + ":8153" + p }

type agentNode struct {
	id   string
	ns   *netns
	proc *proc
	svc  *http.Server
}

// build compiles kasd, agentd and kasctl into dir, or takes them from cfg.BinDir.
func (f *fleet) build(ctx context.Context) error {
	dir := f.cfg.BinDir
	if dir == "" {
		dir = filepath.Join(f.work, "bin")
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(os.PathSeparator),
			"./kasd/cmd/kasd", "./agentd/cmd/agentd", "./kasctl")
		cmd.Dir = f.cfg.ModuleDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %w\n%s", err, out)
		}
		f.logf("built kasd, agentd, kasctl in %v", time.Since(start).Round(time.Millisecond))
	}
	f.bin.kasd, f.bin.agentd, f.bin.kasctl = filepath.Join(dir, "kasd"), filepath.Join(dir, "agentd"), filepath.Join(dir, "kasctl")
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return errors.New("etcd not on PATH: apt-get install etcd-server (make chaos does)")
	}
	f.bin.etcd = etcd
	return nil
}

func (f *fleet) logf(format string, args ...any) {
	fmt.Fprintf(f.cfg.Out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (f *fleet) kasctl(ctx context.Context, args ...string) (string, error) {
	return runCmd(ctx, append([]string{f.bin.kasctl}, args...)...)
}

// start builds the network and starts etcd, kasd and the agents, and waits until every agent
// holds two connections.
func (f *fleet) start(ctx context.Context) error {
	var err error
	if f.nw, err = newNetwork(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	if f.client, err = f.nw.add(ctx, "cl", "10.77.0.10"); err != nil {
		return err
	}
	tr := &http.Transport{DialContext: f.client.Dial, MaxIdleConnsPerHost: 4, DisableCompression: true}
	f.ctl = &http.Client{Transport: tr, Timeout: 2 * time.Second}
	for i := range 3 {
		ns, err := f.nw.add(ctx, fmt.Sprintf("e%d", i+1), fmt.Sprintf("10.77.2.%d", i+1))
		if err != nil {
			return err
		}
		f.etcd = append(f.etcd, &etcdNode{name: fmt.Sprintf("e%d", i+1), ns: ns})
	}
	for i := range 3 {
		ns, err := f.nw.add(ctx, fmt.Sprintf("k%d", i+1), fmt.Sprintf("10.77.1.%d", i+1))
		if err != nil {
			return err
		}
		f.kasd = append(f.kasd, &kasdNode{id: fmt.Sprintf("kasd-%d", i+1), ns: ns})
	}
	for i := range f.cfg.Agents {
		ns, err := f.nw.add(ctx, fmt.Sprintf("a%03d", i+1), fmt.Sprintf("10.77.%d.%d", 3+i/200, 1+i%200))
		if err != nil {
			return err
		}
		f.agents = append(f.agents, &agentNode{id: fmt.Sprintf("agent-%03d", i+1), ns: ns})
	}
	f.logf("network: %d namespaces on bridge %s in %s (%v)", len(f.nw.nodes), bridge, hubNS, time.Since(t0).Round(time.Millisecond))

	if err := f.startEtcd(ctx); err != nil {
		return err
	}
	if err := f.secrets(ctx); err != nil {
		return err
	}
	if err := f.startKasd(ctx); err != nil {
		return err
	}
	if err := f.startAgents(); err != nil {
		return err
	}
	t1 := time.Now()
	if _, err := f.waitWhole(ctx, 60*time.Second); err != nil {
		return err
	}
	f.logf("fleet: 3 etcd, 3 kasd, %d agentd, %d connections in %v", len(f.agents), 2*len(f.agents), time.Since(t1).Round(time.Millisecond))
	return nil
}

func (f *fleet) startEtcd(ctx context.Context) error {
	var initial []string
	for _, e := range f.etcd {
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", e.name, e.ns.ip))
	}
	for _, e := range f.etcd {
		argv := []string{f.bin.etcd, "--name", e.name, "--data-dir", filepath.Join(f.work, "etcd-"+e.name),
			"--listen-client-urls", e.clientURL(), "--advertise-client-urls", e.clientURL(),
			"--listen-peer-urls", "http://" + e.ns.ip + ":2380", "--initial-advertise-peer-urls", "http://" + e.ns.ip + ":2380",
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "qkch", "--logger", "zap", "--log-level", "warn"}
		p, err := startProc("etcd-"+e.name, e.ns.name, filepath.Join(f.logs, "etcd-"+e.name+".log"), argv)
		if err != nil {
			return err
		}
		e.proc = p
	}
	for _, e := range f.etcd {
		if err := f.waitHTTP(ctx, e.clientURL()+"/health", e.proc, 30*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// secrets makes the JWT secret, the peer secret, one token per agent (kasctl agent-token, into
// one tokens file) and the client JWT (kasctl jwt).
func (f *fleet) secrets(ctx context.Context) error {
	dir := filepath.Join(f.work, "secrets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f.tokensFile = filepath.Join(dir, "tokens.yaml")
	for _, name := range []string{"jwt.secret", "peer.secret"} {
		if _, err := f.kasctl(ctx, "secret", "--out", filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	for _, a := range f.agents {
		if _, err := f.kasctl(ctx, "agent-token", "--token-out", filepath.Join(dir, a.id+".token"), "--tokens-file", f.tokensFile, a.id); err != nil {
			return err
		}
	}
	ids := make([]string, len(f.agents))
	for i, a := range f.agents {
		ids[i] = a.id
	}
	jwt, err := f.kasctl(ctx, "jwt", "--secret-file", filepath.Join(dir, "jwt.secret"), "--agents", strings.Join(ids, ","), "--ttl", "1h", "--subject", "qkas-chaos")
	if err != nil {
		return err
	}
	f.jwt = jwt
	return nil
}

func (f *fleet) startKasd(ctx context.Context) error {
	dir := filepath.Join(f.work, "secrets")
	var endpoints []string
	for _, e := range f.etcd {
		endpoints = append(endpoints, e.clientURL())
	}
	for _, k := range f.kasd {
		ip := k.ns.ip
		argv := []string{f.bin.kasd, "--instance-id", k.id, "--fleet",
			"--agent-listen", ip + ":8150", "--api-listen", ip + ":8151", "--peer-listen", ip + ":8152",
			"--observability-listen", ip + ":8153", "--data-dir", filepath.Join(f.work, k.id), "--tls-hosts", ip,
			"--agent-tokens-file", f.tokensFile, "--api-jwt-secret-file", filepath.Join(dir, "jwt.secret"),
			"--peer-secret-file", filepath.Join(dir, "peer.secret"), "--etcd-endpoints", strings.Join(endpoints, ","),
			"--route-timeout", routeTimeout.String(), "--response-header-timeout", headerTimeout.String(),
			"--shutdown-grace", shutdownGrace.String(), "--drain-delay", drainDelay.String(),
			"--log-format", "json", "--log-level", "info",
			// The access logs are the suite's evidence of where a request's bytes were
			// (logs.go), read right after a fault: each line must be in the file as soon as it
			// is logged, not a batch later (the default, 100ms).
			"--log-flush-interval", "0"}
		p, err := startProc(k.id, k.ns.name, filepath.Join(f.logs, k.id+".log"), argv)
		if err != nil {
			return err
		}
		k.proc = p
	}
	var bundle []byte
	for _, k := range f.kasd {
		if err := f.waitHTTP(ctx, k.obsURL("/readyz"), k.proc, 30*time.Second); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(f.work, k.id, "ca.pem"))
		if err != nil {
			return err
		}
		bundle = append(bundle, b...)
	}
	f.caBundle = filepath.Join(dir, "ca-bundle.pem")
	return os.WriteFile(f.caBundle, bundle, 0o600)
}

// startAgents serves each agent's service inside its namespace and starts its agentd.
func (f *fleet) startAgents() error {
	var kas []string
	for _, k := range f.kasd {
		kas = append(kas, k.agentAddr())
	}
	for _, a := range f.agents {
		ln, err := a.ns.Listen("tcp", "127.0.0.1:"+servicePort)
		if err != nil {
			return err
		}
		a.svc = &http.Server{Handler: serviceHandler(a.id), ReadHeaderTimeout: 10 * time.Second}
		f.svcWG.Go(func() { _ = a.svc.Serve(ln) })
		argv := []string{f.bin.agentd, "--kas-address", strings.Join(kas, ","), "--kas-connections", "2",
			"--token-file", filepath.Join(f.work, "secrets", a.id+".token"), "--ca-file", f.caBundle,
			"--service", "echo=http://127.0.0.1:" + servicePort, "--observability-listen", agentdObservabilityAddr,
			"--gitlab-proxy-listen=", "--kubernetes=false", "--replica", a.id, "--drain-timeout", agentDrain.String(),
			"--log-format", "json", "--log-level", "info"}
		if a.proc, err = startProc(a.id, a.ns.name, filepath.Join(f.logs, a.id+".log"), argv); err != nil {
			return err
		}
	}
	return nil
}

// waitHTTP polls url from the client namespace until it answers 200.
func (f *fleet) waitHTTP(ctx context.Context, url string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if f.status(url) == http.StatusOK {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%s); see %s", p.name, p.exitStatus(), p.logPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not 200 after %v", url, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// status GETs url from the client namespace; 0 means no answer.
func (f *fleet) status(url string) int {
	resp, err := f.ctl.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// metric scrapes name (summed over its series) from kasd k's /metrics.
func (f *fleet) metric(k *kasdNode, name string) (float64, error) {
	return f.metricAt(k.obsURL("/metrics"), name)
}

// metricAt scrapes name (summed over its series) from a Prometheus endpoint.
func (f *fleet) metricAt(url, name string) (float64, error) {
	resp, err := f.ctl.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	sum, found := 0.0, false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		series, value, ok := strings.Cut(line, " ")
		if !ok || line[0] == '#' {
			continue
		}
		if n, _, _ := strings.Cut(series, "{"); n != name {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%s: no %s", hostPort(url), name)
	}
	return sum, nil
}

// agentList is GET /api/v1/agents on kasd k: per agent, the kasd instances holding it in k's
// fleet view (instances) and whether k holds a connection itself (connections).
func (f *fleet) agentList(k *kasdNode) (fleetView map[string][]string, own map[string]bool, err error) {
	req, _ := http.NewRequest(http.MethodGet, k.apiURL("/api/v1/agents"), nil)
	req.Header.Set("Authorization", "Bearer "+f.jwt)
	resp, err := f.ctl.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, nil, fmt.Errorf("%s GET /api/v1/agents: %s: %s", k.id, resp.Status, b)
	}
	var body struct {
		Agents []struct {
			ID        string `json:"id"`
			Instances []struct {
				ID string `json:"id"`
			} `json:"instances"`
			Connections []struct {
				Instance string `json:"instance"`
			} `json:"connections"`
		} `json:"agents"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, nil, err
	}
	fleetView, own = map[string][]string{}, map[string]bool{}
	for _, a := range body.Agents {
		for _, in := range a.Instances {
			if !slices.Contains(fleetView[a.ID], in.ID) {
				fleetView[a.ID] = append(fleetView[a.ID], in.ID)
			}
		}
		own[a.ID] = len(a.Connections) > 0
	}
	return fleetView, own, nil
}

// holders returns, per agent id, the kasd holding a connection of it: each kasd's own
// connections from its GET /api/v1/agents (the "connections" lists, read from its agent table;
// the "instances" lists are the fleet view, checked separately by viewMismatches).
func (f *fleet) holders() (map[string][]string, error) {
	out := map[string][]string{}
	for _, k := range f.kasd {
		_, own, err := f.agentList(k)
		if err != nil {
			return nil, err
		}
		for id, held := range own {
			if held {
				out[id] = append(out[id], k.id)
			}
		}
	}
	for id := range out {
		slices.Sort(out[id])
	}
	return out, nil
}

// viewMismatches compares every kasd's fleet view (the "instances" of GET /api/v1/agents) with
// the holders and describes the agents where they differ.
func (f *fleet) viewMismatches(holders map[string][]string) []string {
	var out []string
	for _, k := range f.kasd {
		view, _, err := f.agentList(k)
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		n, example := 0, ""
		for _, a := range f.agents {
			v := slices.Clone(view[a.id])
			slices.Sort(v)
			if !slices.Equal(v, holders[a.id]) {
				if n++; example == "" {
					example = fmt.Sprintf("%s: instances %v, held by %v", a.id, v, holders[a.id])
				}
			}
		}
		if n > 0 {
			out = append(out, fmt.Sprintf("%s lists wrong instances for %d of %d agents (e.g. %s)", k.id, n, len(f.agents), example))
		}
	}
	return out
}

// connections returns kasd_agent_connections of each kasd (-1 when it does not answer).
func (f *fleet) connections() []int {
	out := make([]int, len(f.kasd))
	for i, k := range f.kasd {
		v, err := f.metric(k, "kasd_agent_connections")
		if err != nil {
			out[i] = -1
			continue
		}
		out[i] = int(v)
	}
	return out
}

// whole reports why the fleet is not whole yet ("" when it is): every kasd ready, 2N agent
// connections in all, and every agent held by two kasd.
func (f *fleet) whole() string {
	for _, k := range f.kasd {
		if st := f.status(k.obsURL("/readyz")); st != http.StatusOK {
			return fmt.Sprintf("%s /readyz %d", k.id, st)
		}
	}
	conns := f.connections()
	sum := 0
	for _, c := range conns {
		sum += c
	}
	if sum != 2*len(f.agents) {
		return fmt.Sprintf("agent connections %v (sum %d, want %d)", conns, sum, 2*len(f.agents))
	}
	h, err := f.holders()
	if err != nil {
		return err.Error()
	}
	for _, a := range f.agents {
		if len(h[a.id]) < 2 {
			return fmt.Sprintf("%s held by %v", a.id, h[a.id])
		}
	}
	return ""
}

// waitWhole waits until whole() holds. It returns the last reason it did not, if any.
func (f *fleet) waitWhole(ctx context.Context, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		why := f.whole()
		if why == "" {
			return last, nil
		}
		last = why
		if time.Now().After(deadline) {
			return last, fmt.Errorf("fleet not whole after %v: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// restartKasd restarts a kasd that has exited and waits until it is ready.
func (f *fleet) restartKasd(ctx context.Context, k *kasdNode) error {
	p, err := k.proc.restart()
	if err != nil {
		return err
	}
	k.proc = p
	return f.waitHTTP(ctx, k.obsURL("/readyz"), p, 30*time.Second)
}

// close stops everything: agents, kasd, etcd (SIGKILL: nothing here needs a clean exit), the
// services, and the network.
func (f *fleet) close() {
	for _, a := range f.agents {
		if a.proc != nil {
			_ = a.proc.signal(9)
		}
	}
	for _, k := range f.kasd {
		if k.proc != nil {
			_ = k.proc.signal(9)
		}
	}
	for _, e := range f.etcd {
		if e.proc != nil {
			_ = e.proc.signal(9)
		}
	}
	for _, a := range f.agents {
		a.proc.kill()
		if a.svc != nil {
			_ = a.svc.Close()
		}
	}
	for _, k := range f.kasd {
		k.proc.kill()
	}
	for _, e := range f.etcd {
		e.proc.kill()
	}
	f.svcWG.Wait()
	if f.ctl != nil {
		f.ctl.CloseIdleConnections()
	}
	if f.nw != nil {
		f.nw.close()
	}
}

// hostPort is the host:port of url's authority, for error messages.
func hostPort(u string) string {
	h, _, _ := strings.Cut(strings.TrimPrefix(u, "http://"), "/")
	if _, _, err := net.SplitHostPort(h); err != nil {
		return u
	}
	return h
}
