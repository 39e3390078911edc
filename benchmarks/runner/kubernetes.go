package runner

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qkas/qkas/agentd/kubernetes/kubetest"
	"github.com/qkas/qkas/benchmarks/load"
)

// The kubernetes scenario: what agentd's built-in kubernetes service costs next to a plain
// (URL) service, measured side by side in one run. Four routes answer GET /version:
//
//	apiserver-direct   client → API server stand-in (TLS, HTTP/2, as client-go talks to it)
//	kubernetes         client → kasd → agentd's kubernetes service → the stand-in
//	plain-direct       client → an HTTP/1.1 server answering the same bytes
//	plain              client → kasd → agentd's URL service "plain" → that server
//
// Each qkas path is measured against its own backend reached directly: "added" is what the
// tunnel and agentd's service add to a request. kubernetes added minus plain added is what the
// kubernetes service costs over any other service (issue 13's bar: +100 µs at c=1). The
// stand-in (agentd/kubernetes/kubetest) runs in the runner's process, kasd and agentd as real
// processes; agentd reaches the stand-in through a kubeconfig (--kubeconfig), as it would a
// cluster from outside (over HTTP/1.1 since agentd's kubernetes service uses internal/upstream;
// apiserver-direct stays HTTP/2, as client-go would reach it without qkas). Tunnel CPU is
// kasd's and agentd's, per request, on the qkas paths.

// Route names of the kubernetes scenario.
const (
	routeAPIServerDirect = "apiserver-direct"
	routeKubernetes      = "kubernetes"
	routePlainDirect     = "plain-direct"
	routePlain           = "plain"
)

// KubernetesRun is one route at one concurrency, merged over the alternating rounds.
type KubernetesRun struct {
	Route       string `json:"route"`
	Concurrency int    `json:"concurrency"`
	load.Summary
	// AddedP50us: this route's p50 minus its backend's direct p50 (qkas routes).
	AddedP50us float64 `json:"added_p50_us,omitempty"`
	// TunnelCPUus: kasd's and agentd's CPU per request on this route, µs (qkas routes).
	TunnelCPUus float64 `json:"tunnel_cpu_us_per_request,omitempty"`
}

// KubernetesResults is the kubernetes scenario.
type KubernetesResults struct {
	Rounds int             `json:"rounds"`
	Runs   []KubernetesRun `json:"runs"`
	// ExtraP50us: at each concurrency, the kubernetes route's added p50 minus the plain
	// route's; ExtraCPUus likewise for tunnel CPU per request.
	ExtraP50us map[int]float64 `json:"extra_p50_us"`
	ExtraCPUus map[int]float64 `json:"extra_cpu_us"`
}

func (k *KubernetesResults) find(route string, c int) *KubernetesRun {
	if k == nil {
		return nil
	}
	for i := range k.Runs {
		if k.Runs[i].Route == route && k.Runs[i].Concurrency == c {
			return &k.Runs[i]
		}
	}
	return nil
}

// kubeRoute is one route of the scenario; client makes the HTTP client for c concurrent
// requests (HTTP/2 over TLS to the stand-in, HTTP/1.1 elsewhere).
type kubeRoute struct {
	name   string
	url    string
	header http.Header
	procs  []*proc
	direct string // the route whose p50 this one's added p50 is measured against
	client func(c int) *http.Client
}

// versionBody is what both backends answer to GET /version (the stand-in's bytes).
const versionBody = `{"gitVersion":"v1.37.2-kubetest","major":"1","minor":"37"}`

func (e *env) runKubernetes(ctx context.Context) (*KubernetesResults, error) {
	if !strings.Contains(e.agentHelp, "-kubeconfig") {
		return nil, skipError{"bin/agentd has no --kubeconfig (no kubernetes service)"}
	}
	st := kubetest.NewServer("bench-service-account-token")
	st.Quiet = true
	defer st.Close()
	ln, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	plain := serveHTTP(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(versionBody))
	}))
	defer plain.close()

	dir := e.subdir("kubernetes")
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(kubeconfigFor(st)), 0o600); err != nil {
		return nil, err
	}
	tokensFile := filepath.Join(dir, "agent-tokens.yaml")
	tokens, err := writeTokens(tokensFile, []string{benchAgent})
	if err != nil {
		return nil, err
	}
	tokenFile, err := writeToken(dir, benchAgent, tokens[benchAgent])
	if err != nil {
		return nil, err
	}
	k, err := e.startKasd(ctx, kasdOpts{id: "kasd-k", tokensFile: tokensFile})
	if err != nil {
		return nil, err
	}
	defer k.stop(5 * time.Second)
	agent, err := e.startKubeAgent(k.opts.agentListen, tokenFile, kubeconfig, "plain=http://"+plain.addr())
	if err != nil {
		return nil, err
	}
	defer agent.stop(3 * time.Second)
	if err := e.waitAgent(ctx, k, benchAgent, 1, agent); err != nil {
		return nil, err
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(st.CAData())
	h1 := func(c int) *http.Client { return load.NewClient(c, nil) }
	h2 := func(c int) *http.Client { // what client-go does: one HTTP/2 connection over TLS
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true,
			MaxIdleConnsPerHost: c, DisableCompression: true}}
	}
	jwt := http.Header{"Authorization": {"Bearer " + e.jwt}}
	proxy := k.apiURL("/api/v1/agents/" + benchAgent + "/proxy/")
	routes := []kubeRoute{
		{name: routeAPIServerDirect, url: st.URL + "/version", header: http.Header{"Authorization": {"Bearer " + st.Token}}, client: h2},
		{name: routeKubernetes, url: proxy + "kubernetes/version", header: jwt, procs: []*proc{k.proc, agent}, direct: routeAPIServerDirect, client: h1},
		{name: routePlainDirect, url: "http://" + plain.addr() + "/version", client: h1},
		{name: routePlain, url: proxy + "plain/version", header: jwt, procs: []*proc{k.proc, agent}, direct: routePlainDirect, client: h1},
	}
	if err := waitKubeRoutes(ctx, routes); err != nil {
		return nil, fmt.Errorf("%w\nagentd log:\n%s", err, agent.logTail())
	}

	res := &KubernetesResults{Rounds: max(1, e.sizes.LatencyRounds), ExtraP50us: map[int]float64{}, ExtraCPUus: map[int]float64{}}
	for ci, c := range e.sizes.LatencyConcurrency {
		// Half the latency scenario's requests: four routes, and make bench-quick stays short.
		total := max(res.Rounds, e.sizes.LatencyRequests[ci]/2)
		clients := make([]*http.Client, len(routes))
		fns := make([]load.Func, len(routes))
		for i, r := range routes {
			clients[i] = r.client(c)
			fns[i] = load.Get(clients[i], r.url, r.header)
			if _, err := load.Run(ctx, load.Options{Concurrency: c, Requests: max(100, 5*c)}, fns[i]); err != nil { // warm up
				return nil, err
			}
		}
		merged := make([][]*load.Result, len(routes))
		cpu := make([]time.Duration, len(routes))
		for round := range res.Rounds {
			for j := range routes {
				i := j
				if round%2 == 1 { // alternate the order: neither path gets the quieter half
					i = len(routes) - 1 - j
				}
				cpu0 := cpuOf(routes[i].procs...)
				r, err := load.Run(ctx, load.Options{Concurrency: c, Requests: max(1, total/res.Rounds)}, fns[i])
				if err != nil {
					return nil, err
				}
				cpu[i] += cpuOf(routes[i].procs...) - cpu0
				merged[i] = append(merged[i], r)
			}
		}
		runs := map[string]*KubernetesRun{}
		for i, r := range routes {
			m := load.Merge(merged[i]...)
			run := KubernetesRun{Route: r.name, Concurrency: c, Summary: m.Summarize()}
			if ok := m.OK(); ok > 0 && len(r.procs) > 0 {
				run.TunnelCPUus = float64(cpu[i].Microseconds()) / float64(ok)
			}
			if d := runs[r.direct]; d != nil {
				run.AddedP50us = run.P50us - d.P50us
			}
			res.Runs = append(res.Runs, run)
			runs[r.name] = &res.Runs[len(res.Runs)-1]
			e.logf("kubernetes c=%d %-16s %s added p50 %.0fµs CPU %.1fµs/req", c, r.name, run.Summary, run.AddedP50us, run.TunnelCPUus)
		}
		kube, pl := runs[routeKubernetes], runs[routePlain]
		res.ExtraP50us[c] = kube.AddedP50us - pl.AddedP50us
		res.ExtraCPUus[c] = kube.TunnelCPUus - pl.TunnelCPUus
		e.logf("kubernetes c=%d: the kubernetes service adds %+.0f µs p50 and %+.1f µs CPU per request over the plain service", c, res.ExtraP50us[c], res.ExtraCPUus[c])
		for _, cl := range clients {
			cl.CloseIdleConnections()
		}
	}
	return res, nil
}

// startKubeAgent starts agentd with the kubernetes service (kubeconfig) and services.
func (e *env) startKubeAgent(kasAddr, tokenFile, kubeconfig string, services ...string) (*proc, error) {
	dir := e.subdir("agentd-kubernetes")
	argv := []string{e.agentdBin,
		"--kas-address", kasAddr, "--token-file", tokenFile, "--ca-file", e.caFile,
		"--observability-listen", "", "--replica", benchAgent, "--kubeconfig", kubeconfig,
		"--drain-timeout", "1s", "--log-level", "warn", "--log-format", "json",
	}
	for _, s := range services {
		argv = append(argv, "--service", s)
	}
	if strings.Contains(e.agentHelp, "-gitlab-proxy-listen") {
		argv = append(argv, "--gitlab-proxy-listen=")
	}
	return startProc(dir, "agentd-kubernetes", "", argv...)
}

// kubeconfigFor is a kubeconfig for the stand-in: its URL, CA and ServiceAccount token.
func kubeconfigFor(st *kubetest.Server) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: agent
  user:
    token: %s
contexts:
- name: stand-in
  context: {cluster: stand-in, user: agent}
current-context: stand-in
`, st.URL, base64.StdEncoding.EncodeToString(st.CAData()), st.Token)
}

// waitKubeRoutes waits until a GET on every route succeeds.
func waitKubeRoutes(ctx context.Context, routes []kubeRoute) error {
	for _, r := range routes {
		c := r.client(1)
		get := load.Get(c, r.url, r.header)
		deadline := time.Now().Add(20 * time.Second)
		for {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := get(rctx)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				c.CloseIdleConnections()
				return errors.Join(fmt.Errorf("route %s not working after 20s", r.name), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.CloseIdleConnections()
	}
	return nil
}

// addedUs is an added latency in µs, "–" for a route measured against nothing (direct).
func addedUs(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", v)
}

// cpuUs is a CPU time per request in µs, "–" when not measured.
func cpuUs(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f µs", v)
}

// targetKubernetesExtra is issue 13's bar for the kubernetes service over a plain one.
const targetKubernetesExtra = "≤ +100 µs over plain"

// kubernetesHeadline is the scenario's rows of the headline table.
func kubernetesHeadline(r *Results) []HeadlineRow {
	k := r.Kubernetes
	if k == nil {
		return nil
	}
	var rows []HeadlineRow
	for _, c := range r.Sizes.LatencyConcurrency {
		kube, pl := k.find(routeKubernetes, c), k.find(routePlain, c)
		if kube == nil || pl == nil {
			continue
		}
		if c == 1 {
			rows = append(rows, HeadlineRow{Scenario: "kubernetes", Metric: "added p50, GET /version, c=1, kubernetes service (vs the API server direct) next to a plain service (vs its server direct)",
				Qkas: us(kube.AddedP50us), Baseline: us(pl.AddedP50us) + " plain", Ratio: fmt.Sprintf("%+.0f µs", k.ExtraP50us[c]), Target: targetKubernetesExtra})
		}
		if c == 64 || c == r.Sizes.LatencyConcurrency[len(r.Sizes.LatencyConcurrency)-1] && c > 1 {
			rows = append(rows, HeadlineRow{Scenario: "kubernetes", Metric: fmt.Sprintf("tunnel CPU per request (kasd + agentd), c=%d, kubernetes service next to a plain service", c),
				Qkas: fmt.Sprintf("%.1f µs", kube.TunnelCPUus), Baseline: fmt.Sprintf("%.1f µs plain", pl.TunnelCPUus), Ratio: fmt.Sprintf("%+.1f µs", k.ExtraCPUus[c])})
		}
	}
	return rows
}

// kubernetesDetails is the scenario's section of DETAILS.md.
func kubernetesDetails(r *Results) string {
	k := r.Kubernetes
	if k == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Kubernetes service next to a plain service (GET /version)\n\n%d alternating rounds per concurrency. Routes: %s (client → the API server stand-in, TLS and HTTP/2 as client-go), %s (client → kasd → agentd's kubernetes service → the stand-in), %s (client → an HTTP/1.1 server answering the same bytes), %s (client → kasd → agentd's URL service → that server). Added = route − its backend direct. CPU/req = kasd's and agentd's utime+stime during the route's rounds / requests. Extra = kubernetes − plain, the kubernetes service's cost over any other service (target %s at c=1).\n\n",
		k.Rounds, routeAPIServerDirect, routeKubernetes, routePlainDirect, routePlain, targetKubernetesExtra)
	b.WriteString("| c | route | p50 | p99 | req/s | added p50 | CPU/req | failed |\n|---|---|---|---|---|---|---|---|\n")
	for _, run := range k.Runs {
		fmt.Fprintf(&b, "| %d | %s | %.0f µs | %.0f µs | %.0f | %s | %s | %d |\n", run.Concurrency, run.Route, run.P50us, run.P99us, run.RPS,
			addedUs(run.AddedP50us), cpuUs(run.TunnelCPUus), run.Failed)
	}
	for _, c := range r.Sizes.LatencyConcurrency {
		if v, ok := k.ExtraP50us[c]; ok {
			fmt.Fprintf(&b, "\nc=%d: the kubernetes service adds %+.0f µs p50 and %+.1f µs CPU per request over the plain service.\n", c, v, k.ExtraCPUus[c])
		}
	}
	return b.String()
}
