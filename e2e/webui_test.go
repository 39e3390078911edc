package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestWebUI drives kasd's web page (/ui/ on the API listener) in headless Chromium against a
// fleet of real binaries: two kasd on one embedded etcd, an agentd on the first with a web
// service and a real Prometheus (Debian's prometheus) behind it. The page, served by the second
// kasd, takes a token typed into its form, lists both kasd and the agent, and draws a
// query_range from Prometheus through the forwarded route, live, with the round trip next to
// it; it stays without layout shift while it updates, labels every control, and fits a phone's
// width. The page served by the first kasd then shows the second as draining within 2s of its
// SIGTERM. Screenshots go to $QKAS_WEBUI_SCREENSHOT_DIR, or next to the benchmark results in
// benchmarks/results/last/webui/ (git-ignored, like every benchmark run).
func TestWebUI(t *testing.T) {
	skipShort(t)
	chromium := findChromium()
	if chromium == "" {
		t.Skip("chromium not on PATH (Debian package chromium; .ci/run installs it)")
	}
	promBin, _ := exec.LookPath("prometheus")
	dir := t.TempDir()
	shots := os.Getenv("QKAS_WEBUI_SCREENSHOT_DIR")
	if shots == "" {
		shots = filepath.Join("..", "benchmarks", "results", "last", "webui")
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	// --- the fleet ---
	const agent = "web-agent"
	sec := newSecrets(t, dir, agent)
	peerSecret := filepath.Join(dir, "peer.secret")
	kasctl(t, dir, "secret", "--out", peerSecret)
	etcdClient, etcdPeer := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	startK := func(name string, extra ...string) *Kasd {
		k := startKasd(t, KasdOpts{
			Dir: dir, Name: name, DataDir: name + "-data",
			TokensFile: sec.TokensFile, JWTSecretFile: sec.JWTSecretFile,
			// The second kasd joins the first one's embedded etcd.
			EtcdClientAddr: etcdClient, EtcdPeerAddr: etcdPeer,
			Args: append([]string{"--instance-id", name, "--peer-secret-file", peerSecret, "--registry-ttl", "3s"}, extra...),
		})
		gracefulStop(t, k.Proc)
		return k
	}
	k1 := startK("kasd1")
	// A long drain delay: after SIGTERM, kasd2 stays in the draining state while the test looks.
	k2 := startK("kasd2", "--drain-delay", "5s", "--shutdown-grace", "2s")

	services := map[string]string{"web": startService(t, "web").URL}
	if promBin != "" {
		promAddr := freeAddr(t, "tcp")
		writeFile(t, filepath.Join(dir, "prometheus.yml"), fmt.Sprintf(
			"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['%s']\n", promAddr))
		prom := startGraceful(t, "prometheus", dir, nil, promBin,
			"--config.file", filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path", filepath.Join(dir, "prom-data"),
			"--web.listen-address", promAddr)
		waitReady(t, prom, "http://"+promAddr+"/-/ready")
		services["prometheus"] = "http://" + promAddr
	}
	startAgentd(t, AgentdOpts{
		Dir: dir, KasAddrs: []string{k1.Opts.AgentAddr}, TokenFile: sec.TokenFiles[agent],
		CAFile: k1.CAFile(), Services: services,
	})
	jwt := mintJWT(t, sec.JWTSecretFile, "--agents", agent)
	// kasd2 reaches the agent through kasd1 once the registry told it; a few requests on both
	// routes give the page rates and latencies to show.
	waitFor(t, "the agent answers through kasd2 (forwarded)", func() bool {
		r, err := tryGet(k2.ProxyURL(agent, "web", "/"), jwt)
		return err == nil && r.Status == 200
	})
	for range 20 {
		get(t, k1.ProxyURL(agent, "web", "/"), jwt)
		get(t, k2.ProxyURL(agent, "web", "/"), jwt)
	}

	// --- the browser ---
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.WindowSize(1280, 800),
		chromedp.UserDataDir(filepath.Join(dir, "chromium")),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatalf("starting %s: %v", chromium, err)
	}
	console := collectConsole(t, ctx)
	defer console.stop()

	b := &browser{t: t, ctx: ctx}
	page2 := k2.APIURL() + "/ui/"
	b.do(chromedp.Navigate(page2))
	b.waitJS("the page asks for a token", `document.getElementById('problem').textContent.includes('Paste a client JWT')`, 10*time.Second)
	// The token by keyboard: type it into the labelled field, Enter submits.
	b.do(chromedp.Focus(chromedp.ID("token")), chromedp.SendKeys(chromedp.ID("token"), jwt), chromedp.KeyEvent("\r"))
	b.waitJS("the page lists both kasd and the agent", `!!document.querySelector('tr[data-instance="kasd1"]') &&
		!!document.querySelector('tr[data-instance="kasd2"].self') &&
		!!document.querySelector('tr[data-agent="`+agent+`"]')`, 10*time.Second)
	if p := b.evalString(`document.getElementById('problem').textContent`); p != "" {
		t.Errorf("the page shows a problem with a valid token: %q", p)
	}
	holders := b.evalString(`document.querySelector('tr[data-agent="` + agent + `"]').cells[1].textContent`)
	if !strings.Contains(holders, "kasd1") {
		t.Errorf("the agent's holders read %q, want kasd1", holders)
	}
	b.waitJS("the forwarded route shows requests", `(() => { const r = document.querySelector('tr[data-route="forwarded"]');
		return r && r.cells[7].textContent !== '0' && r.cells[5].textContent.endsWith('ms'); })()`, 10*time.Second)
	t.Logf("kasd2's page: forwarded route p50 %s, p99 %s over %s requests",
		b.evalString(`document.querySelector('tr[data-route="forwarded"]').cells[5].textContent`),
		b.evalString(`document.querySelector('tr[data-route="forwarded"]').cells[6].textContent`),
		b.evalString(`document.querySelector('tr[data-route="forwarded"]').cells[7].textContent`))
	if tok := b.evalString(`sessionStorage.getItem('qkas.jwt')`); tok != jwt {
		t.Errorf("the token is not kept in sessionStorage")
	}

	// The agent filter: one that matches nothing empties the table, clearing it brings it back.
	b.do(chromedp.SendKeys(chromedp.ID("agent-filter"), "zzz"))
	b.waitJS("the filter hides the agent", `!document.querySelector('tr[data-agent]') &&
		!document.querySelector('#agent-table tbody.empty').hidden`, 10*time.Second)
	b.do(chromedp.Evaluate[chromedp.Void](`(() => { const f = document.getElementById('agent-filter');
		f.value = ''; f.dispatchEvent(new Event('input')); })()`))
	b.waitJS("the agent is back", `!!document.querySelector('tr[data-agent="`+agent+`"]')`, 10*time.Second)

	// Every form control has a label; Tab reaches the token field, the graph form and Draw.
	if unlabelled := b.evalString(`Array.from(document.querySelectorAll('input, select, textarea'))
		.filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id || e.name).join(',')`); unlabelled != "" {
		t.Errorf("controls without a label: %s", unlabelled)
	}
	b.do(chromedp.Evaluate[chromedp.Void](`document.activeElement.blur(); window.scrollTo(0, 0)`))
	var tabbed []string
	for range 40 {
		b.do(chromedp.KeyEvent("\t"))
		tabbed = append(tabbed, b.evalString(`document.activeElement.id || document.activeElement.tagName.toLowerCase()`))
	}
	for _, want := range []string{"token", "agent-filter", "g-agent", "g-service", "g-query", "g-start"} {
		if !strings.Contains(","+strings.Join(tabbed, ",")+",", ","+want+",") {
			t.Errorf("Tab never reaches #%s; focus went %v", want, tabbed)
		}
	}

	t.Run("graph", func(t *testing.T) {
		if promBin == "" {
			t.Skip("prometheus not on PATH (Debian package prometheus; .ci/run installs it): the graph view is not checked")
		}
		b := &browser{t: t, ctx: ctx}
		b.waitJS("the service field offers prometheus", `document.getElementById('g-agent').value === '`+agent+`' &&
			document.getElementById('g-service').value === 'prometheus'`, 10*time.Second)
		b.do(chromedp.SetValue(chromedp.ID("g-query"), "prometheus_tsdb_head_samples_appended_total"),
			chromedp.Focus(chromedp.ID("g-query")), chromedp.KeyEvent("\r"))
		b.waitJS("the graph draws points from Prometheus through kasd2 and kasd1", `+document.getElementById('chart').dataset.points > 0 &&
			document.getElementById('rtt-last').textContent.endsWith('ms')`, 20*time.Second)
		first := b.evalInt(`+document.getElementById('chart').dataset.points`)
		// Live: the next queries bring the samples Prometheus scraped meanwhile.
		b.waitJS("the graph gains points", `+document.getElementById('chart').dataset.points > `+strconv.Itoa(first), 15*time.Second)

		// No layout shift while the feed and the graph update.
		b.do(chromedp.Evaluate[chromedp.Void](`window.__shift = 0; new PerformanceObserver((l) => {
			for (const e of l.getEntries()) if (!e.hadRecentInput) window.__shift += e.value; }).observe({type: 'layout-shift'})`))
		time.Sleep(5 * time.Second)
		if shift := b.evalFloat(`window.__shift`); shift > 0.01 {
			t.Errorf("cumulative layout shift %.4f over 5s of updates, want none", shift)
		}
		count := b.evalInt(`+document.getElementById('g-count').textContent`)
		if count < 3 {
			t.Errorf("%d queries in ~8s, want one every 2s", count)
		}
		t.Logf("graph: %d points from %d queries; round trip through qkas (browser → kasd2 → kasd1 → agentd → Prometheus): last %s, median %s, p99 %s; failed %s",
			b.evalInt(`+document.getElementById('chart').dataset.points`), count,
			b.evalString(`document.getElementById('rtt-last').textContent`),
			b.evalString(`document.getElementById('rtt-p50').textContent`),
			b.evalString(`document.getElementById('rtt-p99').textContent`),
			b.evalString(`document.getElementById('g-errors').textContent`))
		if route := b.evalString(`document.getElementById('g-route').textContent`); route != "via kasd1" {
			t.Errorf("the graph's route reads %q, want via kasd1 (kasd2 forwards to the holder)", route)
		}
		if failed := b.evalString(`document.getElementById('g-errors').textContent`); failed != "0" {
			t.Errorf("%s queries failed: %s", failed, b.evalString(`document.getElementById('g-msg').textContent`))
		}
		b.screenshot(filepath.Join(shots, "webui.png"))
	})

	// A phone's width: no horizontal scrolling of the page (tables scroll in their own boxes).
	b.do(chromedp.EmulateViewport(390, 844))
	time.Sleep(500 * time.Millisecond)
	if over := b.evalInt(`document.documentElement.scrollWidth - window.innerWidth`); over > 0 {
		t.Errorf("at 390px the page is %dpx wider than the screen", over)
	}
	b.screenshot(filepath.Join(shots, "webui-phone.png"))
	b.do(chromedp.EmulateViewport(1280, 800))

	// --- drain: kasd1's page shows kasd2 draining within 2s of its SIGTERM ---
	// The token in the fragment: the page keeps it and takes it out of the address bar.
	b.do(chromedp.Navigate(k1.APIURL() + "/ui/#token=" + jwt))
	b.waitJS("kasd1's page shows kasd2 serving with a live link", `(() => { const r = document.querySelector('tr[data-instance="kasd2"]');
		return r && r.cells[1].dataset.state === 'serving' && r.cells[5].textContent.endsWith('ms'); })()`, 15*time.Second)
	if h := b.evalString(`location.hash`); h != "" {
		t.Errorf("the token stayed in the address bar: %q", h)
	}
	if err := k2.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b.waitJS("kasd1's page shows kasd2 draining", `document.querySelector('tr[data-instance="kasd2"]').cells[1].dataset.state === 'draining'`, 10*time.Second)
	took := time.Since(start)
	t.Logf("kasd2's SIGTERM shown as draining on kasd1's page after %v", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the drain took %v to show, want within 2s", took)
	}
	if text := b.evalString(`document.querySelector('tr[data-instance="kasd2"]').cells[1].textContent`); text != "draining" {
		t.Errorf("the state cell reads %q: the state must be written, not only coloured", text)
	}
	b.screenshot(filepath.Join(shots, "webui-draining.png"))

	console.stop()
	for _, m := range console.messages() {
		if m.IsException() || m.Source == "security" || m.Source == "javascript" ||
			(m.Type == chromedp.ConsoleError && m.Source != "network") {
			t.Errorf("browser console: %s (%s %s:%d)", m.String(), m.Source, m.URL, m.Line+1)
		}
	}
	t.Logf("screenshots in %s", shots)
}

// findChromium returns the path of a Chromium or Chrome binary, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser runs chromedp actions for a test, failing it on error.
type browser struct {
	t   *testing.T
	ctx context.Context
}

func (b *browser) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatal(err)
	}
}

// eval evaluates expr in the page (through DevTools: the page's CSP, which forbids eval, does
// not apply) and decodes its JSON value into v.
func (b *browser) eval(expr string, v any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v", expr, err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		b.t.Fatalf("evaluating %s: %v (%s)", expr, err, raw)
	}
}

func (b *browser) evalString(expr string) string {
	b.t.Helper()
	var s string
	b.eval(expr, &s)
	return s
}

func (b *browser) evalFloat(expr string) float64 {
	b.t.Helper()
	var f float64
	b.eval(expr, &f)
	return f
}

func (b *browser) evalInt(expr string) int {
	b.t.Helper()
	return int(b.evalFloat(expr))
}

// waitJS polls the boolean expression expr every 50ms until it is true, failing the test after
// timeout. It polls from Go, not with chromedp.Poll, whose predicate needs eval in the page.
func (b *browser) waitJS(what, expr string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`(() => { try { return !!(`+expr+`); } catch (e) { return false; } })()`))
		cancel()
		if err == nil && json.Unmarshal(raw, &ok) == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out after %v waiting until %s (problem line: %q)", timeout, what,
				b.evalString(`document.getElementById('problem') ? document.getElementById('problem').textContent : ''`))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) screenshot(path string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// consoleLog collects the browser console until stop.
type consoleLog struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	msgs   []chromedp.ConsoleMessage
}

func collectConsole(t *testing.T, ctx context.Context) *consoleLog {
	t.Helper()
	cctx, cancel := context.WithCancel(ctx)
	c := &consoleLog{cancel: cancel, done: make(chan struct{})}
	messages := chromedp.Console(cctx)
	go func() { // owned by c: stop waits for it
		defer close(c.done)
		for m, err := range messages {
			if err != nil {
				return
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *consoleLog) stop() {
	c.cancel()
	<-c.done
}

func (c *consoleLog) messages() []chromedp.ConsoleMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]chromedp.ConsoleMessage(nil), c.msgs...)
}
