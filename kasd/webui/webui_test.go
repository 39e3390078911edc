package webui_test

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/kasd/webui"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

// fakeStatus hands out the statuses a test sets, as kasd.Server.StatusFor would.
type fakeStatus struct {
	mu   sync.Mutex
	st   *kasd.Status
	err  error
	opts []kasd.StatusOptions // every call's
}

func (f *fakeStatus) set(st *kasd.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
}

func (f *fakeStatus) Status(r *http.Request, opt kasd.StatusOptions) (*kasd.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opts = append(f.opts, opt)
	if f.err != nil {
		return nil, f.err
	}
	cp := *f.st
	return &cp, nil
}

// status builds a Status at t0+at with cumulative local requests by status and api errors.
func status(at time.Duration, local map[string]uint64, apiErrors map[string]uint64) *kasd.Status {
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	return &kasd.Status{
		Time:     t0.Add(at),
		Instance: kasd.InstanceStatus{ID: "kas-1", State: "serving"},
		Routes: []kasd.RouteStatus{
			{Route: "local", Requests: local},
			{Route: "forwarded", Requests: map[string]uint64{}},
			{Route: "none", Requests: map[string]uint64{}},
		},
		APIErrors: apiErrors,
	}
}

func newHandler(t *testing.T, f *fakeStatus) *webui.Handler {
	t.Helper()
	h, err := webui.New(webui.Config{Status: f.Status})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func getFeed(t *testing.T, h http.Handler) webui.Feed {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, webui.FeedPath, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("feed: %d %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("feed content type %q", ct)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("feed Cache-Control %q, want no-store (it is scoped to a token)", cc)
	}
	var feed webui.Feed
	if err := json.Unmarshal(rec.Body.Bytes(), &feed); err != nil {
		t.Fatalf("feed is not JSON: %v\n%s", err, rec.Body)
	}
	return feed
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// TestFeedRates: the first poll has no rates; the next ones give requests and errors per second
// by route and code over the time between the samples.
func TestFeedRates(t *testing.T) {
	f := &fakeStatus{}
	h := newHandler(t, f)
	f.set(status(0, map[string]uint64{"200": 100}, map[string]uint64{}))
	feed := getFeed(t, h)
	if feed.PollMillis != 1000 {
		t.Errorf("poll_ms = %d, want 1000", feed.PollMillis)
	}
	if feed.Status.Instance.ID != "kas-1" {
		t.Errorf("status not passed through: %+v", feed.Status.Instance)
	}
	if feed.Rates.WindowSecs != 0 || len(feed.Rates.Routes) != 3 || feed.Rates.Routes[0].RequestsPerSec != 0 {
		t.Errorf("first poll rates = %+v, want a zero window", feed.Rates)
	}

	f.set(status(2*time.Second, map[string]uint64{"200": 120, "503": 4, "499": 1}, map[string]uint64{"agent_not_connected": 4, "client_canceled": 1}))
	feed = getFeed(t, h)
	r := feed.Rates
	if !near(r.WindowSecs, 2) {
		t.Fatalf("window = %v, want 2s", r.WindowSecs)
	}
	local := r.Routes[0]
	if local.Route != "local" || !near(local.RequestsPerSec, 12.5) || !near(local.ErrorsPerSec, 2.5) || !near(local.ErrorRatio, 0.2) {
		t.Errorf("local = %+v, want 12.5 req/s, 2.5 err/s, ratio 0.2", local)
	}
	if !near(local.ByCodePerSec["200"], 10) || !near(local.ByCodePerSec["503"], 2) || !near(local.ByCodePerSec["499"], 0.5) {
		t.Errorf("by code = %v", local.ByCodePerSec)
	}
	if r.Routes[1].Route != "forwarded" || r.Routes[1].RequestsPerSec != 0 || r.Routes[1].ErrorRatio != 0 {
		t.Errorf("forwarded = %+v, want nothing", r.Routes[1])
	}
	if !near(r.APIErrorsPerSec["agent_not_connected"], 2) || len(r.APIErrorsPerSec) != 2 {
		t.Errorf("api errors = %v", r.APIErrorsPerSec)
	}
}

// TestFeedRateWindow: rates are over at most the window (10s): a burst long ago no longer
// counts, and polls closer together than the sample gap do not crowd out the baseline.
func TestFeedRateWindow(t *testing.T) {
	f := &fakeStatus{}
	h := newHandler(t, f)
	f.set(status(0, map[string]uint64{"200": 0}, nil))
	getFeed(t, h)
	f.set(status(time.Second, map[string]uint64{"200": 1000}, nil)) // a burst
	getFeed(t, h)
	// Then one request per second for 12s, polled every 100ms by many viewers.
	var feed webui.Feed
	for ms := 1100; ms <= 13000; ms += 100 {
		n := 1000 + uint64((ms-1000)/1000)
		f.set(status(time.Duration(ms)*time.Millisecond, map[string]uint64{"200": n}, nil))
		feed = getFeed(t, h)
	}
	r := feed.Rates
	if r.WindowSecs > 10 || r.WindowSecs < 9 {
		t.Fatalf("window = %vs, want the last ~10s", r.WindowSecs)
	}
	if got := r.Routes[0].RequestsPerSec; got < 0.8 || got > 1.2 {
		t.Errorf("rate = %v/s, want ~1/s: the burst 12s ago is outside the window", got)
	}
}

// TestFeedErrors: the feed answers the Status function's typed error as the API does, with
// nothing of the status.
func TestFeedErrors(t *testing.T) {
	f := &fakeStatus{err: api.Errorf(api.CodeUnauthenticated, "missing bearer token")}
	h := newHandler(t, f)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, webui.FeedPath, nil))
	if rec.Code != http.StatusUnauthorized || rec.Header().Get(api.HeaderError) != "unauthenticated" {
		t.Errorf("feed without a token: %d %s %s", rec.Code, rec.Header().Get(api.HeaderError), rec.Body)
	}
	if strings.Contains(rec.Body.String(), "instance") {
		t.Errorf("an unauthenticated feed leaked the status: %s", rec.Body)
	}
}

// TestFeedFilter: ?agent= reaches the status as its filter, with the agent limit; a filter
// that cannot be part of an agent id is refused before any status is taken.
func TestFeedFilter(t *testing.T) {
	f := &fakeStatus{}
	f.set(status(0, map[string]uint64{}, nil))
	h, err := webui.New(webui.Config{Status: f.Status, MaxAgents: 7})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, webui.FeedPath+"?agent=prod-eu.1", nil))
	if rec.Code != 200 || len(f.opts) != 1 || f.opts[0] != (kasd.StatusOptions{MaxAgents: 7, Filter: "prod-eu.1"}) {
		t.Fatalf("feed: %d, status options %+v", rec.Code, f.opts)
	}
	for _, bad := range []string{"a%20b", "%2F", "x%22%3E", strings.Repeat("a", 64)} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, webui.FeedPath+"?agent="+bad, nil))
		if rec.Code != http.StatusBadRequest || rec.Header().Get(api.HeaderError) != "bad_request" {
			t.Errorf("filter %q: %d, want 400", bad, rec.Code)
		}
	}
	if len(f.opts) != 1 {
		t.Errorf("a refused filter still took a status")
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := webui.New(webui.Config{}); err == nil {
		t.Error("New without Status succeeded")
	}
	f := &fakeStatus{}
	if _, err := webui.New(webui.Config{Status: f.Status, PollInterval: 5 * time.Second}); err == nil {
		t.Error("a 5s poll interval was accepted; the page must update within 2s")
	}
}

// TestAssets: the page and everything it references are embedded and served with the security
// headers; unknown paths, other methods and revalidation behave.
func TestAssets(t *testing.T) {
	h := newHandler(t, &fakeStatus{})
	get := func(path string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	page := get("/ui/")
	if page.Code != 200 || !strings.HasPrefix(page.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("/ui/: %d %s", page.Code, page.Header().Get("Content-Type"))
	}
	csp := page.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if page.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Error("no nosniff")
	}
	body := page.Body.String()
	// Everything the page loads comes from this origin and is served.
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(body, -1)
	if len(refs) < 4 {
		t.Fatalf("found only %d references in index.html", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.Contains(ref, "//") || strings.HasPrefix(ref, "/") {
			t.Errorf("index.html loads %q from outside /ui/", ref)
			continue
		}
		rec := get("/ui/" + ref)
		if rec.Code != 200 || rec.Body.Len() == 0 {
			t.Errorf("%s: %d", ref, rec.Code)
		}
	}
	js := get("/ui/vendor/uPlot.iife.min.js")
	if !strings.HasPrefix(js.Header().Get("Content-Type"), "text/javascript") || !strings.Contains(js.Body.String(), "uPlot") {
		t.Errorf("uPlot: %s", js.Header().Get("Content-Type"))
	}
	if lic := get("/ui/vendor/LICENSE"); !strings.Contains(lic.Body.String(), "MIT License") {
		t.Error("uPlot's licence is not served next to it")
	}
	if rec := get("/ui/app.js", "If-None-Match", get("/ui/app.js").Header().Get("ETag")); rec.Code != http.StatusNotModified {
		t.Errorf("revalidating app.js: %d, want 304", rec.Code)
	}
	if rec := get("/ui"); rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "/ui/" {
		t.Errorf("/ui: %d %s", rec.Code, rec.Header().Get("Location"))
	}
	for _, p := range []string{"/ui/nope.js", "/ui/assets/app.js", "/ui/../api/v1/agents", "/ui/vendor/uplot.go"} {
		if rec := get(p); rec.Code != http.StatusNotFound || rec.Header().Get(api.HeaderError) != "not_found" {
			t.Errorf("%s: %d, want 404 not_found", p, rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, webui.FeedPath, strings.NewReader("{}")))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST feed: %d", rec.Code)
	}
}

// TestMount: the page under /ui/, everything else to the API unchanged (no path cleaning).
func TestMount(t *testing.T) {
	var apiPaths []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiPaths = append(apiPaths, r.URL.EscapedPath())
		w.WriteHeader(http.StatusTeapot)
	})
	srv := httptest.NewServer(webui.Mount(newHandler(t, &fakeStatus{}), api))
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	for path, want := range map[string]int{
		"/ui/":                                 200,
		"/ui":                                  301,
		"/api/v1/agents":                       http.StatusTeapot,
		"/api/v1/agents/a/proxy/svc/x//y/../z": http.StatusTeapot,
		"/":                                    http.StatusTeapot,
		"/uix":                                 http.StatusTeapot,
	} {
		resp, err := client.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if !strings.Contains(strings.Join(apiPaths, " "), "/api/v1/agents/a/proxy/svc/x//y/../z") {
		t.Errorf("the API saw %v: the proxied path was rewritten", apiPaths)
	}
}

// TestFeedWithServer: the feed of a real kasd.Server refuses a request without a JWT and
// answers one with a JWT.
func TestFeedWithServer(t *testing.T) {
	store, err := auth.ParseTokens([]byte("agents: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("0123456789abcdef0123456789abcdef-webui")
	srv, err := kasd.New(kasd.Config{InstanceID: "kas-web", AgentAuth: kasd.TokenFileAuth{Store: store}, ClientAuth: &auth.Verifier{Key: key, AllowAnyAgent: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ui, err := webui.New(webui.Config{Status: srv.StatusFor})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	ui.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, webui.FeedPath, nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("no JWT: %d %s", rec.Code, rec.Body)
	}
	c := auth.ClientClaims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer: auth.DefaultIssuer, Audience: jwt.ClaimStrings{"gitlab-kas"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute)),
	}, Agents: []string{auth.AnyAgent}}
	tok, err := auth.Mint(key, c)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, webui.FeedPath, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	feed := getFeed(t, serveFunc(ui.ServeHTTP, req))
	if feed.Status.Instance.ID != "kas-web" || feed.Status.Instance.State != "serving" || feed.Status.Agents == nil {
		t.Errorf("feed = %+v", feed.Status)
	}
	srv.BeginDrain()
	if feed := getFeed(t, serveFunc(ui.ServeHTTP, req)); feed.Status.Instance.State != "draining" {
		t.Errorf("after BeginDrain the feed says %q", feed.Status.Instance.State)
	}
}

// serveFunc adapts a handler so that getFeed's request is replaced by req.
func serveFunc(h http.HandlerFunc, req *http.Request) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { h(w, req) })
}
