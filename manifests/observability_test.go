package manifests_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/yaml"
)

// observabilityDir holds prometheus-operator objects and a Grafana dashboard, which client-go's
// scheme cannot decode: the kustomize checks of manifests_test.go leave it to this file.
const observabilityDir = "observability"

// promRule is the part of the PrometheusRule the tests read.
type promRule struct {
	Kind string `json:"kind"`
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

func readRules(t *testing.T) (promRule, []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(observabilityDir, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var r promRule
	if err := yaml.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r, data
}

// dashboardExprs returns every query of the dashboard (panels and template variables).
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(observabilityDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard without uid or title")
	}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d: no title or no query", p.ID)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			exprs = append(exprs, v.Definition)
		}
	}
	return exprs
}

var metricName = regexp.MustCompile(`\b((?:kasd|agentd)_[a-z0-9_]+)\b`)

// namedMetrics returns the kasd_/agentd_ metric names the queries use, with where each is used.
func namedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	uses := map[string][]string{}
	for _, e := range dashboardExprs(t) {
		for _, m := range metricName.FindAllString(e, -1) {
			uses[m] = append(uses[m], "dashboard")
		}
	}
	r, _ := readRules(t)
	for _, g := range r.Spec.Groups {
		for _, rule := range g.Rules {
			for _, m := range metricName.FindAllString(rule.Expr, -1) {
				uses[m] = append(uses[m], "alert "+rule.Alert)
			}
		}
	}
	return uses
}

// TestObservabilityRules checks the PrometheusRule's groups with promtool, and that every alert
// has a severity, a summary and a runbook note.
func TestObservabilityRules(t *testing.T) {
	r, _ := readRules(t)
	if r.Kind != "PrometheusRule" || len(r.Spec.Groups) == 0 {
		t.Fatalf("kind %q with %d groups", r.Kind, len(r.Spec.Groups))
	}
	alerts := 0
	for _, g := range r.Spec.Groups {
		for _, rule := range g.Rules {
			alerts++
			if rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" || rule.Annotations["runbook"] == "" {
				t.Errorf("alert %s: want a severity label and summary and runbook annotations", rule.Alert)
			}
		}
	}
	if alerts < 5 {
		t.Errorf("%d alerts", alerts)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus): rules not checked")
	}
	// promtool reads a rule file: the PrometheusRule's spec.
	var obj map[string]any
	_, data := readRules(t)
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	spec, err := yaml.Marshal(obj["spec"])
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "qkas.rules.yaml")
	if err := os.WriteFile(file, spec, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d rules found", alerts)) {
		t.Fatalf("promtool check rules: want %d rules found:\n%s", alerts, out)
	}
}

// alertTests are promtool unit tests of the alerts' conditions: each fires for the series that
// should trigger it and for no other (kasd-1, kasd-2 and agentd-1 stay quiet). They run against
// the rules without their annotations, which promtool would otherwise compare verbatim.
const alertTests = `rule_files: [qkas.rules.yaml]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'kasd_registry_lease_state{instance="kasd-0"}'
    values: '1 1 0 0 0 0 0 0 0 0 0 0'
  - series: 'kasd_registry_lease_state{instance="kasd-1"}'
    values: '1x12'
  - series: 'kasd_peer_links{instance="kasd-0"}'
    values: '0x12'
  - series: 'kasd_registry_entries{instance="kasd-0",kind="instances"}'
    values: '3x12'
  - series: 'kasd_peer_links{instance="kasd-2"}'
    values: '0x12'
  - series: 'kasd_registry_entries{instance="kasd-2",kind="instances"}'
    values: '1x12'
  - series: 'kasd_peer_refusals_total{instance="kasd-0",side="accept",reason="fleet_mismatch"}'
    values: '0+6x30'
  - series: 'kasd_peer_refusals_total{instance="kasd-1",side="accept",reason="protocol"}'
    values: '0+6x30'
  - series: 'kasd_peer_refusals_total{instance="kasd-1",side="dial",reason="secret_mismatch"}'
    values: '0x30'
  - series: 'kasd_requests_total{instance="kasd-0",route="local",code="200"}'
    values: '0+540x30'
  - series: 'kasd_requests_total{instance="kasd-0",route="local",code="502"}'
    values: '0+60x30'
  - series: 'kasd_requests_total{instance="kasd-1",route="local",code="200"}'
    values: '0+600x30'
  - series: 'agentd_connections{namespace="a",pod="agentd-0"}'
    values: '2 2 0 0 0 0 0 0 0 0'
  - series: 'agentd_connections{namespace="a",pod="agentd-1"}'
    values: '2x10'
  - series: 'kasd_udp_receive_drops_total{instance="kasd-0",socket="agent"}'
    values: '0+600x30'
  - series: 'kasd_tls_cert_expiry_timestamp_seconds{instance="kasd-0",cert="agent"}'
    values: '864000x30'
  - series: 'kasd_tls_cert_expiry_timestamp_seconds{instance="kasd-1",cert="agent"}'
    values: '8640000x30'
  alert_rule_test:
  - eval_time: 5m
    alertname: KasdRegistryLeaseLost
    exp_alerts:
    - exp_labels: {severity: critical, instance: kasd-0}
  - eval_time: 8m
    alertname: KasdNoPeerLinks
    exp_alerts:
    - exp_labels: {severity: warning, instance: kasd-0}
  - eval_time: 5m
    alertname: KasdPeerHandshakesRefused
    exp_alerts: []
  - eval_time: 25m
    alertname: KasdPeerHandshakesRefused
    exp_alerts:
    - exp_labels: {severity: warning, instance: kasd-0, side: accept, reason: fleet_mismatch}
  - eval_time: 20m
    alertname: KasdProxyErrorRatioHigh
    exp_alerts:
    - exp_labels: {severity: warning, instance: kasd-0}
  - eval_time: 9m
    alertname: AgentdNotConnected
    exp_alerts:
    - exp_labels: {severity: critical, namespace: a, pod: agentd-0}
  - eval_time: 20m
    alertname: QkasUDPReceiveDrops
    exp_alerts:
    - exp_labels: {severity: warning, instance: kasd-0, socket: agent}
  - eval_time: 20m
    alertname: KasdTLSCertificateExpiresSoon
    exp_alerts:
    - exp_labels: {severity: warning, instance: kasd-0, cert: agent}
`

// TestObservabilityAlertsFire runs alertTests with promtool.
func TestObservabilityAlertsFire(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus): alerts not tested")
	}
	_, data := readRules(t)
	var obj struct {
		Spec struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	for _, g := range obj.Spec.Groups {
		rules, _ := g["rules"].([]any)
		for _, r := range rules {
			delete(r.(map[string]any), "annotations")
		}
	}
	rules, err := yaml.Marshal(map[string]any{"groups": obj.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "qkas.rules.yaml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), []byte(alertTests), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yaml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestObservabilityKustomization builds manifests/observability and checks that the monitors
// select what the kasd and agentd manifests create, by labels and port name.
func TestObservabilityKustomization(t *testing.T) {
	fsys := loadManifests(t)
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, path.Join(root, observabilityDir))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]map[string]any{}
	for _, r := range m.Resources() {
		obj, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		kinds[r.GetKind()] = obj
		if r.GetKind() == "ConfigMap" {
			if r.GetLabels()["grafana_dashboard"] != "1" {
				t.Errorf("dashboard ConfigMap without the grafana_dashboard label")
			}
			data, _ := obj["data"].(map[string]any)
			if s, _ := data["qkas.json"].(string); !json.Valid([]byte(s)) {
				t.Errorf("dashboard ConfigMap: qkas.json is not JSON")
			}
		}
	}
	for _, k := range []string{"PrometheusRule", "ServiceMonitor", "PodMonitor", "ConfigMap"} {
		if kinds[k] == nil {
			t.Errorf("no %s in the build", k)
		}
	}
	kasd, err := build(fsys, "kasd")
	if err != nil {
		t.Fatal(err)
	}
	agentd, err := build(fsys, "agentd")
	if err != nil {
		t.Fatal(err)
	}
	sm := kinds["ServiceMonitor"]
	if !selectsPort(t, sm, "endpoints", kasd, "Service") {
		t.Errorf("the ServiceMonitor selects no kasd Service with its port")
	}
	if !selectsPort(t, kinds["PodMonitor"], "podMetricsEndpoints", agentd, "Deployment") {
		t.Errorf("the PodMonitor selects no agentd pods with its port")
	}
}

// selectsPort says whether monitor's matchLabels select an object of kind in b (a Service, or a
// Deployment's pod template) in a namespace the monitor looks in, that has a port named as the
// monitor's first endpoint's. prometheus-operator looks in the monitor's own namespace unless
// its namespaceSelector says any or lists others: agentd runs in qkas-agent, the kit is applied
// in qkas.
func selectsPort(t *testing.T, monitor map[string]any, endpointsKey string, b *buildResult, kind string) bool {
	t.Helper()
	meta, _ := monitor["metadata"].(map[string]any)
	monitorNS, _ := meta["namespace"].(string)
	spec, _ := monitor["spec"].(map[string]any)
	nsSel, _ := spec["namespaceSelector"].(map[string]any)
	inNamespace := func(ns string) bool {
		if anyNS, _ := nsSel["any"].(bool); anyNS {
			return true
		}
		names, _ := nsSel["matchNames"].([]any)
		if len(names) == 0 {
			return ns == monitorNS
		}
		for _, n := range names {
			if n == ns {
				return true
			}
		}
		return false
	}
	sel, _ := spec["selector"].(map[string]any)
	match, _ := sel["matchLabels"].(map[string]any)
	eps, _ := spec[endpointsKey].([]any)
	if len(match) == 0 || len(eps) == 0 {
		t.Fatalf("monitor without matchLabels or %s", endpointsKey)
	}
	port, _ := eps[0].(map[string]any)["port"].(string)
	for _, o := range b.objects {
		if o.kind != kind || !inNamespace(o.namespace) {
			continue
		}
		y, err := yaml.Marshal(o.obj)
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec struct {
				Ports []struct {
					Name string `json:"name"`
				} `json:"ports"`
				Template struct {
					Metadata struct {
						Labels map[string]string `json:"labels"`
					} `json:"metadata"`
					Spec struct {
						Containers []struct {
							Ports []struct {
								Name string `json:"name"`
							} `json:"ports"`
						} `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(y, &v); err != nil {
			t.Fatal(err)
		}
		labels, ports := v.Metadata.Labels, []string{}
		for _, p := range v.Spec.Ports {
			ports = append(ports, p.Name)
		}
		if kind == "Deployment" {
			labels = v.Spec.Template.Metadata.Labels
			for _, c := range v.Spec.Template.Spec.Containers {
				for _, p := range c.Ports {
					ports = append(ports, p.Name)
				}
			}
		}
		matches := true
		for k, want := range match {
			if labels[k] != want {
				matches = false
			}
		}
		if matches && contains(ports, port) {
			return true
		}
	}
	return false
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

// TestObservabilityMetricsExist runs kasd (in a fleet, with its embedded etcd) and agentd, sends
// requests that succeed and fail, and checks that every metric the dashboard and the alerts
// name is on their /metrics. The UDP drop counters are another change's: absent, they are
// reported and skipped.
func TestObservabilityMetricsExist(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kasd and agentd")
	}
	uses := namedMetrics(t)
	if len(uses) < 10 {
		t.Fatalf("only %d metrics named: %v", len(uses), uses)
	}
	exported := scrapeRunningFleet(t)
	var names []string
	for n := range uses {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if exported[n] {
			continue
		}
		if strings.Contains(n, "udp") && strings.Contains(n, "drops") {
			t.Logf("%s (used by %v) is not exported yet: skipped", n, uses[n])
			continue
		}
		t.Errorf("%s, used by %v, is not exported by kasd or agentd", n, uses[n])
	}
}

var (
	obsBinsOnce sync.Once
	obsBinsDir  string
	obsBinsErr  error
)

// observabilityBinaries builds kasd, agentd and kasctl once for this file's tests (QKAS_BIN_DIR
// overrides), into a directory removed by TestMain's caller at exit: the OS temp dir.
func observabilityBinaries(t *testing.T) string {
	t.Helper()
	obsBinsOnce.Do(func() {
		if dir := os.Getenv("QKAS_BIN_DIR"); dir != "" {
			obsBinsDir, obsBinsErr = filepath.Abs(dir)
			return
		}
		dir, err := os.MkdirTemp("", "qkas-observability-test")
		if err != nil {
			obsBinsErr = err
			return
		}
		obsBinsDir = dir
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./kasd/cmd/kasd", "./agentd/cmd/agentd", "./kasctl")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			obsBinsErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if obsBinsErr != nil {
		t.Fatal(obsBinsErr)
	}
	if os.Getenv("QKAS_BIN_DIR") == "" {
		t.Cleanup(func() { os.RemoveAll(obsBinsDir) }) // one test uses them
	}
	return obsBinsDir
}

func freeTCP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// startProc starts bin with args, logging to dir/name.log; it is stopped (SIGTERM, then kill)
// when the test ends, and its log printed if the test failed.
func startProc(t *testing.T, dir, name, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // owned: waited for in Cleanup
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, b)
		}
	})
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return strings.TrimSpace(string(out))
}

// scrapeRunningFleet starts kasd and agentd, sends traffic and returns the metric names on
// both /metrics pages (histograms also under their _bucket, _sum and _count names).
func scrapeRunningFleet(t *testing.T) map[string]bool {
	bins := observabilityBinaries(t)
	dir := t.TempDir()
	kasctl := filepath.Join(bins, "kasctl")
	secret, tokens, token := filepath.Join(dir, "jwt.secret"), filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "agent.token")
	run(t, kasctl, "secret", "-o", secret)
	run(t, kasctl, "agent-token", "demo", "--token-out", token, "--tokens-file", tokens)
	jwt := run(t, kasctl, "jwt", "--secret-file", secret, "--agents", "demo", "--ttl", "10m")

	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select { // past the client's Qkas-Timeout
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
	t.Cleanup(svc.Close)
	agentAddr, api, kasObs, agentObs := freeUDP(t), freeTCP(t), freeTCP(t), freeTCP(t)
	etcdClient, etcdPeer := freeTCP(t), freeTCP(t)
	data := filepath.Join(dir, "kasd-data")
	startProc(t, dir, "kasd", filepath.Join(bins, "kasd"),
		"--data-dir", data, "--agent-tokens-file", tokens, "--api-jwt-secret-file", secret,
		"--agent-listen", agentAddr, "--api-listen", api, "--observability-listen", kasObs, "--peer-listen", "127.0.0.1:0",
		"--embedded-etcd-listen", etcdClient, "--embedded-etcd-peer-listen", etcdPeer,
		"--log-format", "json", "--shutdown-grace", "2s")
	waitFor(t, "kasd ready", func() bool { return get(t, "http://"+kasObs+"/readyz", "") == http.StatusOK })
	startProc(t, dir, "agentd", filepath.Join(bins, "agentd"),
		"--kas-address", agentAddr, "--token-file", token, "--ca-file", filepath.Join(data, "ca.pem"),
		"--service", "web="+svc.URL, "--service", "down=http://127.0.0.1:1",
		"--observability-listen", agentObs, "--gitlab-proxy-listen", "", "--kubernetes=false",
		"--log-format", "json", "--drain-timeout", "2s")
	proxy := "http://" + api + "/api/v1/agents/demo/proxy/"
	waitFor(t, "a request through the agent", func() bool { return get(t, proxy+"web/", jwt) == http.StatusOK })
	if code := get(t, proxy+"down/", jwt); code != http.StatusBadGateway {
		t.Errorf("unreachable service: %d, want 502", code)
	}
	if code := get(t, proxy+"nope/", jwt); code != http.StatusNotFound {
		t.Errorf("unknown service: %d, want 404", code)
	}
	if code := get(t, proxy+"web/", ""); code != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", code)
	}
	if code := get(t, proxy+"web/slow", jwt, "Qkas-Timeout", "100ms"); code != http.StatusGatewayTimeout {
		t.Errorf("past Qkas-Timeout: %d, want 504", code)
	}
	// A second replica, which forwards to the first: the peer metrics.
	apiB, obsB := freeTCP(t), freeTCP(t)
	startProc(t, dir, "kasd-b", filepath.Join(bins, "kasd"),
		"--data-dir", filepath.Join(dir, "kasd-b-data"), "--agent-tokens-file", tokens, "--api-jwt-secret-file", secret,
		"--peer-secret-file", filepath.Join(data, "peer.secret"), "--etcd-endpoints", "http://"+etcdClient,
		"--agent-listen", "127.0.0.1:0", "--api-listen", apiB, "--observability-listen", obsB, "--peer-listen", "127.0.0.1:0",
		"--log-format", "json", "--shutdown-grace", "2s")
	waitFor(t, "kasd-b ready", func() bool { return get(t, "http://"+obsB+"/readyz", "") == http.StatusOK })
	waitFor(t, "a request forwarded by kasd-b", func() bool {
		return get(t, "http://"+apiB+"/api/v1/agents/demo/proxy/web/", jwt) == http.StatusOK
	})
	names := map[string]bool{}
	for _, obs := range []string{kasObs, obsB, agentObs} {
		resp, err := http.Get("http://" + obs + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
				names[f[2]] = true
				if len(f) > 3 && f[3] == "histogram" {
					for _, s := range []string{"_bucket", "_sum", "_count"} {
						names[f[2]+s] = true
					}
				}
				continue
			}
			if strings.HasPrefix(line, "#") || line == "" {
				continue
			}
			if i := strings.IndexAny(line, "{ "); i > 0 {
				names[line[:i]] = true
			}
		}
		resp.Body.Close()
	}
	return names
}

// get returns the status of a GET of url with the bearer token and header key-value pairs (0
// when it failed).
func get(t *testing.T, url, bearer string, header ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestServiceLinksSetNoFlag: Kubernetes gives every pod of a namespace environment variables
// for its Services (KASD_SERVICE_HOST, KASD_PORT_8151_TCP, … for the Service kasd). kasd and
// agentd read KASD_<FLAG> and AGENTD_<FLAG>: none of those service links may name a flag.
func TestServiceLinksSetNoFlag(t *testing.T) {
	bins := qkasFlags(t)
	fsys := loadManifests(t)
	links := map[string]string{}
	for _, dir := range []string{"kasd", "agentd", "etcd"} {
		b, err := build(fsys, dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range b.objects {
			svc, ok := o.obj.(*corev1.Service)
			if !ok {
				continue
			}
			p := strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_"))
			links[p+"_SERVICE_HOST"], links[p+"_SERVICE_PORT"], links[p+"_PORT"] = svc.Name, svc.Name, svc.Name
			for _, port := range svc.Spec.Ports {
				if port.Name != "" {
					links[p+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(port.Name, "-", "_"))] = svc.Name
				}
				base := fmt.Sprintf("%s_PORT_%d_%s", p, port.Port, strings.ToUpper(string(port.Protocol)))
				for _, s := range []string{"", "_PROTO", "_PORT", "_ADDR"} {
					links[base+s] = svc.Name
				}
			}
		}
	}
	if len(links) < 10 {
		t.Fatalf("only %d service links: %v", len(links), links)
	}
	for bin, flags := range bins {
		prefix := strings.ToUpper(bin)
		for name := range flags {
			env := prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
			if svc, ok := links[env]; ok {
				t.Errorf("%s --%s is set by the service link %s of Service %s", bin, name, env, svc)
			}
		}
	}
}
