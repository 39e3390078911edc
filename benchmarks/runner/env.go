package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/quic"
)

// env is what every scenario shares: binaries, secrets, the certificate all kasd present, and
// the work directory that holds process logs.
type env struct {
	cfg   Config
	sizes Sizes
	work  string // temporary; logs, secrets, data dirs
	out   string // results directory of this run

	kasdBin, agentdBin, kasctlBin string

	secretFile string // client JWT secret
	jwt        string // minted with kasctl, valid 1h
	certFile   string // kasd's TLS certificate, issued by the dev CA for 127.0.0.1 and the veth
	keyFile    string
	caFile     string

	fleet     bool   // bin/kasd has the fleet flags (--peer-listen)
	fleetWhy  string // why not, when !fleet
	fleetFlag bool   // bin/kasd has --fleet (default true): standalone kasd need --fleet=false
	pprofFlag bool   // bin/kasd serves /debug/pprof/ only with --pprof, on --pprof-listen
	agentHelp string // bin/agentd -h, to turn off listeners newer versions open by default

	seq int // names work subdirectories
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.cfg.Log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// subdir makes a fresh directory in the work directory.
func (e *env) subdir(name string) string {
	e.seq++
	d := filepath.Join(e.work, fmt.Sprintf("%02d-%s", e.seq, name))
	_ = os.MkdirAll(d, 0o700)
	return d
}

// prepare builds or finds the binaries, makes the secret, the JWT and the certificate, and
// probes for the fleet.
func (e *env) prepare(ctx context.Context) error {
	binDir := e.cfg.BinDir
	if binDir == "" {
		binDir = filepath.Join(e.work, "bin")
		for name, pkg := range map[string]string{"kasd": "./kasd/cmd/kasd", "agentd": "./agentd/cmd/agentd", "kasctl": "./kasctl"} {
			e.logf("building %s", name)
			cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(binDir, name), pkg)
			cmd.Dir = e.cfg.ModuleDir
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
			}
		}
	}
	e.kasdBin, e.agentdBin, e.kasctlBin = filepath.Join(binDir, "kasd"), filepath.Join(binDir, "agentd"), filepath.Join(binDir, "kasctl")
	for _, b := range []string{e.kasdBin, e.agentdBin, e.kasctlBin} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("binary missing (run make build, or omit --bin): %w", err)
		}
	}
	e.secretFile = filepath.Join(e.work, "api-jwt.secret")
	if _, err := runCmd(ctx, e.kasctlBin, "secret", "--out", e.secretFile); err != nil {
		return err
	}
	jwt, err := runCmd(ctx, e.kasctlBin, "jwt", "--secret-file", e.secretFile, "--agents", benchAgent+","+tcpAgent, "--ttl", "1h", "--subject", "qkasbench")
	if err != nil {
		return err
	}
	e.jwt = jwt
	cert, caFile, err := quic.DevCertificate(filepath.Join(e.work, "tls"), []string{vethKasAddr})
	if err != nil {
		return err
	}
	_ = cert
	e.caFile = caFile
	e.certFile = filepath.Join(e.work, "tls", quic.DevServerFile)
	e.keyFile = filepath.Join(e.work, "tls", quic.DevServerKeyFile)

	// The fleet (two kasd sharing etcd) is there once kasd has --peer-listen.
	cmd := exec.CommandContext(ctx, e.kasdBin, "-h")
	help, _ := cmd.CombinedOutput()
	e.fleet = strings.Contains(string(help), "-peer-listen")
	e.fleetFlag = strings.Contains(string(help), "  -fleet\n")
	e.pprofFlag = strings.Contains(string(help), "-pprof-listen")
	ahelp, _ := exec.CommandContext(ctx, e.agentdBin, "-h").CombinedOutput()
	e.agentHelp = string(ahelp)
	if !e.fleet {
		e.fleetWhy = "fleet not available: bin/kasd has no --peer-listen"
	}
	return nil
}

// writeTokens writes a kasd agent tokens file for ids and returns each id's token.
func writeTokens(path string, ids []string) (map[string]string, error) {
	var b strings.Builder
	b.WriteString("agents:\n")
	tokens := make(map[string]string, len(ids))
	for _, id := range ids {
		tok := auth.NewAgentToken()
		tokens[id] = tok
		fmt.Fprintf(&b, "- id: %s\n  token_sha256: %s\n", id, auth.TokenSHA256(tok))
	}
	return tokens, os.WriteFile(path, []byte(b.String()), 0o600)
}

// freePort returns a port that was free on 127.0.0.1 for network ("tcp" or "udp") a moment ago.
func freePort(network string) (int, error) {
	switch network {
	case "udp":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port, nil
	default:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port, nil
	}
}

func freeAddr(network string) (string, error) {
	p, err := freePort(network)
	return fmt.Sprintf("127.0.0.1:%d", p), err
}

// kasdOpts places one kasd. Empty addresses are picked on 127.0.0.1.
type kasdOpts struct {
	id          string // instance id and process name
	ns          *netns
	agentListen string
	apiListen   string
	obsListen   string
	pprofListen string // /debug/pprof/ (the observability port on kasd without --pprof)
	tokensFile  string
	extra       []string // more flags (fleet)
	cpus        string   // taskset CPU list kasd runs on; empty: any
}

// kasdProc is a running kasd and the client that reaches its API and observability port.
type kasdProc struct {
	*proc
	opts   kasdOpts
	client *http.Client // dials in opts.ns
}

func (k *kasdProc) apiURL(path string) string { return "http://" + k.opts.apiListen + path }
func (k *kasdProc) obsURL(path string) string { return "http://" + k.opts.obsListen + path }

// pprofURL is /debug/pprof/… on k.
func (k *kasdProc) pprofURL(path string) string {
	if k.opts.pprofListen == "" {
		return k.obsURL(path)
	}
	return "http://" + k.opts.pprofListen + path
}

func (e *env) startKasd(ctx context.Context, o kasdOpts) (*kasdProc, error) {
	var err error
	for _, a := range []struct {
		p   *string
		net string
	}{{&o.agentListen, "udp"}, {&o.apiListen, "tcp"}, {&o.obsListen, "tcp"}} {
		if *a.p == "" {
			if *a.p, err = freeAddr(a.net); err != nil {
				return nil, err
			}
		}
	}
	dir := e.subdir(o.id)
	argv := []string{e.kasdBin,
		"--agent-listen", o.agentListen, "--api-listen", o.apiListen, "--observability-listen", o.obsListen,
		"--data-dir", filepath.Join(dir, "data"), "--instance-id", o.id,
		"--agent-tokens-file", o.tokensFile, "--api-jwt-secret-file", e.secretFile,
		"--tls-cert-file", e.certFile, "--tls-key-file", e.keyFile,
		"--shutdown-grace", "1s", "--log-level", "warn", "--log-format", "json",
	}
	if e.pprofFlag {
		if o.pprofListen == "" {
			if o.pprofListen, err = freeAddr("tcp"); err != nil {
				return nil, err
			}
		}
		argv = append(argv, "--pprof", "--pprof-listen", o.pprofListen)
	}
	if o.extra == nil && e.fleetFlag {
		argv = append(argv, "--fleet=false")
	}
	argv = append(argv, o.extra...)
	p, err := startProc(dir, o.id, o.ns.String(), pinned(o.cpus, argv)...)
	if err != nil {
		return nil, err
	}
	k := &kasdProc{proc: p, opts: o, client: nsClient(o.ns, 16)}
	if err := k.waitReady(ctx, 20*time.Second); err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return k, nil
}

// nsClient is an HTTP/1.1 client whose connections are made in ns.
func nsClient(ns *netns, conns int) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, DisableCompression: true}
	if ns != nil {
		tr.DialContext = ns.Dial
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func (k *kasdProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := k.client.Get(k.obsURL("/readyz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if k.exited() {
			return fmt.Errorf("kasd %s exited: %s", k.opts.id, k.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kasd %s not ready after %v: %v; log:\n%s", k.opts.id, timeout, err, k.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// agentConnections lists the kasd instances that hold agent id according to kasd k (GET
// /api/v1/agents): the fleet's holders when k reports them, else one entry per own connection.
func (e *env) agentConnections(k *kasdProc, id string) ([]string, error) {
	req, _ := http.NewRequest(http.MethodGet, k.apiURL("/api/v1/agents"), nil)
	req.Header.Set("Authorization", "Bearer "+e.jwt)
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /api/v1/agents: %s: %s", resp.Status, b)
	}
	var body struct {
		Agents []struct {
			ID        string `json:"id"`
			Instances []struct {
				ID string `json:"id"`
			} `json:"instances"` // the fleet: every kasd holding the agent
			Connections []struct {
				Instance string `json:"instance"`
			} `json:"connections"` // this kasd's own
		} `json:"agents"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	var out []string
	for _, a := range body.Agents {
		if a.ID == id {
			for _, in := range a.Instances {
				out = append(out, in.ID)
			}
			if len(out) > 0 {
				continue
			}
			for _, c := range a.Connections {
				out = append(out, c.Instance)
			}
		}
	}
	return out, nil
}

// waitAgent waits until kasd k lists at least n connections of agent id.
func (e *env) waitAgent(ctx context.Context, k *kasdProc, id string, n int, agent *proc) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		conns, err := e.agentConnections(k, id)
		if err == nil && len(conns) >= n {
			return nil
		}
		if agent != nil && agent.exited() {
			return fmt.Errorf("agentd %s exited: %s", agent.name, agent.logTail())
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("agent %s: %d/%d connections on %s after 20s (err %v)", id, len(conns), n, k.opts.id, err)
			if agent != nil {
				msg += "\nagentd log:\n" + agent.logTail()
			}
			return fmt.Errorf("%s\nkasd log:\n%s", msg, k.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// agentOpts places one agentd.
type agentOpts struct {
	id        string // process name and replica
	ns        *netns
	kas       []string // kasd agent addresses
	tokenFile string
	services  []string // NAME=URL
	conns     int
	cpus      string // taskset CPU list agentd runs on; empty: any
}

func (e *env) startAgent(o agentOpts) (*proc, error) {
	dir := e.subdir("agentd-" + o.id)
	argv := []string{e.agentdBin,
		"--kas-address", strings.Join(o.kas, ","), "--token-file", o.tokenFile, "--ca-file", e.caFile,
		"--observability-listen", "", "--replica", o.id, "--kas-connections", fmt.Sprint(max(1, o.conns)),
		"--drain-timeout", "1s", "--log-level", "warn", "--log-format", "json",
	}
	for _, s := range o.services {
		argv = append(argv, "--service", s)
	}
	// Listeners with fixed default ports would collide between agents (and other users).
	if strings.Contains(e.agentHelp, "-gitlab-proxy-listen") {
		argv = append(argv, "--gitlab-proxy-listen=")
	}
	return startProc(dir, "agentd-"+o.id, o.ns.String(), pinned(o.cpus, argv)...)
}

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// writeToken writes one agent token to a file in dir.
func writeToken(dir, id, token string) (string, error) {
	p := filepath.Join(dir, id+".token")
	return p, os.WriteFile(p, []byte(token), 0o600)
}

// localStack is one kasd (or a fleet of two), one agentd "bench" exposing the service "svc"
// served in-process, all on loopback in the runner's namespace.
type localStack struct {
	ns     *netns // where everything runs; nil: the runner's namespace
	svc    *httpServer
	kasd   []*kasdProc // [0] holds the agent's connection; [1] (fleet) forwards to it
	agent  *proc
	tokens map[string]string // agent id → token, for the extra agents
}

const benchAgent = "bench"

// startLocalStack starts the service, kasd (two with the fleet when fleet is true) and agentd.
// With the fleet, the agent connects to kasd[0] only, so requests through kasd[1] are forwarded.
// extraAgents get entries in the tokens file (their tokens in st.tokens) for simulated agents.
func (e *env) startLocalStack(ctx context.Context, fleet bool, extraAgents ...string) (st *localStack, err error) {
	return e.startLocalStackIn(ctx, nil, fleet, extraAgents...)
}

// startLocalStackIn is startLocalStack with every process and socket in ns (nil: the runner's
// namespace). Ports are picked in the runner's namespace; a fresh namespace has them all free.
func (e *env) startLocalStackIn(ctx context.Context, ns *netns, fleet bool, extraAgents ...string) (st *localStack, err error) {
	st = &localStack{ns: ns}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	st.svc = serveHTTP(ln, serviceHandler(e.sizes.BodyBytes))
	dir := e.subdir("stack")
	tokensFile := filepath.Join(dir, "agent-tokens.yaml")
	tokens, err := writeTokens(tokensFile, append([]string{benchAgent}, extraAgents...))
	if err != nil {
		return nil, err
	}
	st.tokens = tokens
	tokenFile, err := writeToken(dir, benchAgent, tokens[benchAgent])
	if err != nil {
		return nil, err
	}
	n := 1
	var fleetFlags [][]string
	if fleet {
		n = 2
		if fleetFlags, err = e.fleetFlags(dir, 2); err != nil {
			return nil, err
		}
	}
	for i := range n {
		o := kasdOpts{id: fmt.Sprintf("kasd-%c", 'a'+i), tokensFile: tokensFile, ns: ns}
		if fleet {
			o.extra = fleetFlags[i]
		}
		k, err := e.startKasd(ctx, o)
		if err != nil {
			return nil, err
		}
		st.kasd = append(st.kasd, k)
	}
	st.agent, err = e.startAgent(agentOpts{id: benchAgent, ns: ns, kas: []string{st.kasd[0].opts.agentListen},
		tokenFile: tokenFile, services: []string{"svc=http://" + st.svc.addr()}})
	if err != nil {
		return nil, err
	}
	for _, k := range st.kasd {
		if err := e.waitAgent(ctx, k, benchAgent, 1, st.agent); err != nil {
			return nil, err
		}
	}
	for _, r := range e.routes(st) {
		c := r.client(1)
		err := waitRoute(ctx, r, c)
		c.CloseIdleConnections()
		if err != nil {
			return nil, err
		}
	}
	return st, nil
}

// waitRoute waits until a small GET through r succeeds.
func waitRoute(ctx context.Context, r route, c *http.Client) error {
	get := load.Get(c, r.base+"/small", r.header)
	deadline := time.Now().Add(20 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := get(rctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("route %s not working after 20s: %v", r.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fleetFlags returns the extra kasd flags for n kasd sharing one embedded etcd (run by the
// first, the others join it with --etcd-endpoints) and a peer secret.
func (e *env) fleetFlags(dir string, n int) ([][]string, error) {
	peerSecret := filepath.Join(dir, "peer.secret")
	if _, err := runCmd(context.Background(), e.kasctlBin, "secret", "--out", peerSecret); err != nil {
		return nil, err
	}
	etcdPort, err := freePort("tcp")
	if err != nil {
		return nil, err
	}
	etcdPeerPort, err := freePort("tcp")
	if err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	var out [][]string
	for i := range n {
		peer, err := freeAddr("udp")
		if err != nil {
			return nil, err
		}
		// No rebalancing: the bench agents know kasd A only (the forwarded route goes through
		// kasd B), so a move would bring a connection straight back to A and drain the old one
		// within the agents' 1 s --drain-timeout, cutting a longer transfer (8 of 24
		// throughput runs failed that way; 14 of 14 passed without it).
		f := []string{"--peer-listen", peer, "--peer-secret-file", peerSecret, "--rebalance-interval", "0"}
		if i == 0 {
			f = append(f, "--embedded-etcd-listen", fmt.Sprintf("127.0.0.1:%d", etcdPort),
				"--embedded-etcd-peer-listen", fmt.Sprintf("127.0.0.1:%d", etcdPeerPort))
		} else {
			f = append(f, "--etcd-endpoints", etcdURL)
		}
		out = append(out, f)
	}
	return out, nil
}

func (st *localStack) close() {
	if st == nil {
		return
	}
	st.agent.stop(3 * time.Second)
	for i := len(st.kasd) - 1; i >= 0; i-- { // the etcd holder last
		st.kasd[i].stop(5 * time.Second)
	}
	st.svc.close()
}

// route is one way to reach the service: directly or through qkas. Adding a route (forwarded) is
// one more entry in routes.
type route struct {
	name   string
	base   string // URL prefix; the service path is appended
	header http.Header
	procs  []*proc // tunnel processes whose CPU this route spends
	ns     *netns  // where its clients dial; nil: the runner's namespace
	// small, when set, is the small request itself (routes that do not speak HTTP: raw-quic);
	// otherwise it is a GET of base+"/small".
	small load.Func
}

// client is an HTTP/1.1 client for r that keeps up to conns connections.
func (r route) client(conns int) *http.Client {
	if r.ns == nil {
		return load.NewClient(conns, nil)
	}
	return load.NewClient(conns, r.ns.Dial)
}

// smallFunc is r's small request, issued with c when r speaks HTTP.
func (r route) smallFunc(c *http.Client) load.Func {
	if r.small != nil {
		return r.small
	}
	return load.Get(c, r.base+"/small", r.header)
}

// routes lists direct, local (through kasd[0]) and, with the fleet, forwarded (kasd[1] →
// kasd[0] → agent).
func (e *env) routes(st *localStack) []route {
	auth := http.Header{"Authorization": {"Bearer " + e.jwt}}
	proxy := "/api/v1/agents/" + benchAgent + "/proxy/svc"
	rs := []route{
		{name: "direct", base: "http://" + st.svc.addr(), ns: st.ns},
		{name: "local", base: st.kasd[0].apiURL(proxy), header: auth, procs: []*proc{st.kasd[0].proc, st.agent}, ns: st.ns},
	}
	if len(st.kasd) > 1 {
		rs = append(rs, route{name: "forwarded", base: st.kasd[1].apiURL(proxy), header: auth,
			procs: []*proc{st.kasd[1].proc, st.kasd[0].proc, st.agent}, ns: st.ns})
	}
	return rs
}
