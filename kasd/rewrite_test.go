package kasd

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

const testPrefix = "/api/v1/agents/a/proxy/prom"

func TestRewriteRef(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/graph/", testPrefix + "/graph/"},
		{"/", testPrefix + "/"},
		{"/graph?x=1#f", testPrefix + "/graph?x=1#f"},
		{testPrefix + "/graph", ""}, // already under the prefix (--web.external-url)
		{testPrefix, ""},
		{testPrefix + "?x", ""},
		{"/api/v1/agents/a/proxy/prometheus", testPrefix + "/api/v1/agents/a/proxy/prometheus"}, // not under: prefix of a name
		{"graph/", ""},    // relative: resolves under the prefix by itself
		{"../x", ""},      // idem
		{"//evil/x", ""},  // another host
		{"/\\evil/x", ""}, // browsers read it as //evil
		{"http://kas.example/graph", "http://kas.example" + testPrefix + "/graph"},
		{"https://KAS.example:443/x", ""}, // port differs from the client's Host
		{"https://kas.example", "https://kas.example" + testPrefix + "/"},
		{"https://kas.example?q", "https://kas.example" + testPrefix + "/?q"},
		{"//kas.example/graph", "//kas.example" + testPrefix + "/graph"},
		{"http://kas.example" + testPrefix + "/graph", ""},
		{"http://prometheus:9090/graph", ""}, // the service's own host: kasd cannot know it
		{"mailto://kas.example/x", "mailto://kas.example" + testPrefix + "/x"},
		{"javascript:alert(1)//kas.example/", ""},
		{"", ""},
	} {
		got, ok := rewriteRef(tc.in, testPrefix, "kas.example")
		want := tc.want
		if want == "" {
			want = tc.in
		}
		if got != want || ok != (tc.want != "") {
			t.Errorf("rewriteRef(%q) = %q, %v; want %q", tc.in, got, ok, want)
		}
	}
}

func TestRewriteRefresh(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"5; url=/next", "5; url=" + testPrefix + "/next"},
		{"0;URL='/next'", "0;URL='" + testPrefix + "/next'"},
		{`3, url = "/a b"`, `3, url = "` + testPrefix + `/a b"`},
		{"5", ""},
		{"5; url=next", ""},
		{"5; url=" + testPrefix + "/x", ""},
		{"5; urx=/x", ""},
		{"5; url='/unterminated", "5; url='" + testPrefix + "/unterminated"},
	} {
		got, ok := rewriteRefresh(tc.in, testPrefix, "kas.example")
		want := tc.want
		if want == "" {
			want = tc.in
		}
		if got != want || ok != (tc.want != "") {
			t.Errorf("rewriteRefresh(%q) = %q, %v; want %q", tc.in, got, ok, want)
		}
	}
}

func TestRewriteCookiePath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a=b; Path=/", "a=b; Path=" + testPrefix + "/"},
		{"a=b; path=/ui; HttpOnly", "a=b; Path=" + testPrefix + "/ui; HttpOnly"},
		{"a=b;Path = /x;Secure", "a=b;Path=" + testPrefix + "/x;Secure"},
		{"a=b; Path=" + testPrefix + "/x", ""},
		{"a=b", ""},                   // no Path: the browser takes the request's directory
		{"a=b; Domain=x; Secure", ""}, // idem
		{"a=b; Path=relative", ""},    // invalid Path: the browser ignores it
		{"path=/x; Secure", ""},       // the cookie's name, not an attribute
		{"a=b; Pathology=/x", ""},     // not Path
		{"a=b; Expires=Wed; Path=/", "a=b; Expires=Wed; Path=" + testPrefix + "/"},
	} {
		got := rewriteCookiePath(tc.in, testPrefix)
		want := tc.want
		if want == "" {
			want = tc.in
		}
		if got != want {
			t.Errorf("rewriteCookiePath(%q) = %q; want %q", tc.in, got, want)
		}
	}
}

func TestForwardedPrefix(t *testing.T) {
	for _, tc := range []struct{ path, rest, want string }{
		{"/api/v1/agents/a/proxy/prom/graph", "/graph", testPrefix},
		{"/api/v1/agents/a/proxy/prom/", "/", testPrefix},
		{"/api/v1/agents/a/proxy/prom", "/", testPrefix},                                   // built
		{"/api/v1/agents/%61/proxy/prom/x%2Fy", "/x%2Fy", "/api/v1/agents/%61/proxy/prom"}, // as the client wrote it
	} {
		u, err := url.Parse(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := forwardedPrefix(&http.Request{URL: u}, "a", "prom", tc.rest); got != tc.want {
			t.Errorf("forwardedPrefix(%q, %q) = %q; want %q", tc.path, tc.rest, got, tc.want)
		}
	}
}

// FuzzRewrite: the rewriters never panic, a rewritten reference is under the prefix (or keeps
// its host, the client's), and rewriting is idempotent, so a service that already uses its
// external URL is left alone.
func FuzzRewrite(f *testing.F) {
	for _, s := range []string{"/graph/", "http://kas.example/x", "//kas.example", "5; url='/x'", "a=b; Path=/", "a=b;path=/x;", "", "/", "//", "http://", "a=b; Path="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if got, ok := rewriteRef(v, testPrefix, "kas.example"); ok {
			if !strings.Contains(got, testPrefix) {
				t.Fatalf("rewriteRef(%q) = %q: not under the prefix", v, got)
			}
			if again, ok2 := rewriteRef(got, testPrefix, "kas.example"); ok2 {
				t.Fatalf("rewriteRef not idempotent: %q -> %q -> %q", v, got, again)
			}
		} else if got != v {
			t.Fatalf("rewriteRef(%q) changed it to %q without saying so", v, got)
		}
		if got, ok := rewriteRefresh(v, testPrefix, "kas.example"); ok {
			if _, ok2 := rewriteRefresh(got, testPrefix, "kas.example"); ok2 {
				t.Fatalf("rewriteRefresh not idempotent: %q -> %q", v, got)
			}
		} else if got != v {
			t.Fatalf("rewriteRefresh(%q) changed it to %q without saying so", v, got)
		}
		got := rewriteCookiePath(v, testPrefix)
		if got != v && !strings.Contains(got, "Path="+testPrefix) {
			t.Fatalf("rewriteCookiePath(%q) = %q", v, got)
		}
		if again := rewriteCookiePath(got, testPrefix); again != got {
			t.Fatalf("rewriteCookiePath not idempotent: %q -> %q -> %q", v, got, again)
		}
		_ = validRequestID(v) // must not panic
	})
}

// Sampling keeps about the asked fraction even of ids that differ only at their end (kasd's own
// ids are a sequence number after the instance id), and decides the same for the same id.
func TestSampledRate(t *testing.T) {
	for _, rate := range []float64{0.01, 0.1, 0.5, 0.9} {
		kept := 0
		const n = 20000
		for i := range n {
			id := "kas-1-" + strconv.FormatUint(uint64(i), 36)
			first := sampled(id, rate)
			if first {
				kept++
			}
			if again := sampled(id, rate); again != first {
				t.Fatal("not deterministic")
			}
		}
		if got := float64(kept) / n; got < rate*0.8-0.005 || got > rate*1.2+0.005 {
			t.Errorf("rate %v kept %v", rate, got)
		}
	}
	if !sampled("x", 1) || sampled("x", 0) {
		t.Error("rates 1 and 0")
	}
}

// The per-request cost of the access line (written as JSON to io.Discard) and of the response
// head hygiene of a plain response.
func BenchmarkAccessLine(b *testing.B) {
	s := &Server{log: zerolog.New(io.Discard), cfg: Config{}.WithDefaults()}
	r, _ := http.NewRequest("GET", "http://kas/api/v1/agents/a/proxy/prom/graph?x=1", nil)
	tgt := &target{agentID: "a", service: "prom", requestID: "kas-1-abc", prefix: testPrefix}
	tgt.acc.status, tgt.acc.route, tgt.acc.caller = 200, "local", "ci-bot"
	b.ReportAllocs()
	for b.Loop() {
		s.logAccess(r, tgt)
	}
}

func BenchmarkResponseHygiene(b *testing.B) {
	s := &Server{cfg: Config{}.WithDefaults()}
	s.m = &metrics{hygiene: newHygieneMetrics(prometheus.NewRegistry())}
	r, _ := http.NewRequest("GET", "http://kas/api/v1/agents/a/proxy/prom/graph", nil)
	tgt := &target{agentID: "a", service: "prom", requestID: "kas-1-abc", prefix: testPrefix}
	ids := []string{tgt.requestID}
	b.ReportAllocs()
	for b.Loop() {
		h := http.Header{"Content-Type": {"text/plain"}, HeaderXRequestID: ids, HeaderRequestID: ids}
		s.responseHygiene(h, r, tgt)
	}
}

// A browser honours the last Path attribute of a Set-Cookie (RFC 6265 5.3, as net/http's
// parser): every Path is put under the prefix, so a second one cannot set the cookie for kasd's
// whole origin.
func TestCookieEveryPathUnderPrefix(t *testing.T) {
	for _, in := range []string{
		"sid=x; Path=/a; Path=/",
		"sid=x; Path=" + testPrefix + "/ui; Path=/",
	} {
		out := rewriteCookiePath(in, testPrefix)
		h := http.Header{"Set-Cookie": {out}}
		c := (&http.Response{Header: h}).Cookies()
		if len(c) != 1 {
			t.Fatalf("cookies %v", c)
		}
		if !strings.HasPrefix(c[0].Path, testPrefix) {
			t.Errorf("rewriteCookiePath(%q) = %q: effective Path %q is outside %s", in, out, c[0].Path, testPrefix)
		}
	}
}
