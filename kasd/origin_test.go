package kasd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/qkas/qkas/kasd"
)

// webService answers like a web UI that does not know it is behind a prefix: a redirect to an
// absolute path, a page with a cookie, and the forwarding headers it was sent, echoed.
func webService(t *testing.T) *httptest.Server {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			http.Redirect(w, r, "/graph/", http.StatusFound)
		case "/abs":
			// An absolute URL built from X-Forwarded-Host/-Proto, as many frameworks do.
			w.Header().Set("Location", r.Header.Get("X-Forwarded-Proto")+"://"+r.Header.Get("X-Forwarded-Host")+"/login")
			w.Header().Set("Content-Location", "/abs.html")
			w.Header().Set("Refresh", "3; url=/graph/")
			w.WriteHeader(http.StatusSeeOther)
		case "/graph/":
			w.Header().Set("Content-Type", "text/html")
			w.Header().Add("Set-Cookie", "session=1; Path=/; HttpOnly")
			w.Header().Add("Set-Cookie", "pref=dark; Path=/graph")
			w.Header().Set("Content-Security-Policy", "default-src 'self'")
			io.WriteString(w, "<script>alert(document.cookie)</script>")
		case "/headers":
			for _, k := range []string{"X-Forwarded-Prefix", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				io.WriteString(w, k+"="+strings.Join(r.Header.Values(k), ",")+"\n")
			}
		}
	}))
	t.Cleanup(svc.Close)
	return svc
}

func noRedirects(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cc
}

// TestWebAppUnderPrefix: the service's redirects stay under
// /api/v1/agents/{agent}/proxy/{service}/, and it is told where it is, whatever the client
// claimed.
func TestWebAppUnderPrefix(t *testing.T) {
	e := newEnv(t)
	svc := webService(t)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"prom": svc.URL}), 1)
	e.client = noRedirects(e.client)
	const prefix = "/api/v1/agents/alpha/proxy/prom"

	resp := e.do("GET", prefix+"/", nil)
	readAll(t, resp)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != prefix+"/graph/" {
		t.Errorf("redirect: %d Location %q, want %q", resp.StatusCode, resp.Header.Get("Location"), prefix+"/graph/")
	}

	resp = e.do("GET", prefix+"/abs", nil)
	readAll(t, resp)
	host := strings.TrimPrefix(e.api.URL, "http://")
	for k, want := range map[string]string{
		"Location":         "http://" + host + prefix + "/login",
		"Content-Location": prefix + "/abs.html",
		"Refresh":          "3; url=" + prefix + "/graph/",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}

	resp = e.do("GET", prefix+"/headers", nil, "X-Forwarded-Prefix", "/evil", "X-Forwarded-Host", "evil.example", "X-Forwarded-Proto", "gopher")
	got := readAll(t, resp)
	want := "X-Forwarded-Prefix=" + prefix + "\nX-Forwarded-Host=" + host + "\nX-Forwarded-Proto=http\n"
	if got != want {
		t.Errorf("the service saw\n%s\nwant\n%s", got, want)
	}
	if n := counter(t, e.reg, "kasd_header_rejections_total", map[string]string{"reason": "forwarded_header"}); n != 1 {
		t.Errorf("forwarded_header counted %v, want 1", n)
	}
}

// TestOriginPolicy: by default a proxied page is sandboxed, not sniffed, and sets no cookie;
// a service listed as a web app is served as is, its cookies under its prefix.
func TestOriginPolicy(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.WebApps = []string{"alpha/grafana"} })
	svc := webService(t)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"prom": svc.URL, "grafana": svc.URL}), 1)
	e.client = noRedirects(e.client)
	const prom, grafana = "/api/v1/agents/alpha/proxy/prom", "/api/v1/agents/alpha/proxy/grafana"

	resp := e.do("GET", prom+"/graph/", nil)
	readAll(t, resp)
	if got := resp.Header.Values("Content-Security-Policy"); len(got) != 2 || got[0] != "default-src 'self'" || got[1] != "sandbox" {
		t.Errorf("default: Content-Security-Policy %q, want the service's and sandbox", got)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("default: X-Content-Type-Options %q", got)
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 0 {
		t.Errorf("default: Set-Cookie %q passed", got)
	}
	if n := counter(t, e.reg, "kasd_header_rejections_total", map[string]string{"reason": "set_cookie_dropped"}); n != 1 {
		t.Errorf("set_cookie_dropped counted %v, want 1", n)
	}
	// Even a response without a policy of its own (an error from the service, a redirect).
	resp = e.do("GET", prom+"/", nil)
	readAll(t, resp)
	if got := resp.Header.Values("Content-Security-Policy"); len(got) != 1 || got[0] != "sandbox" {
		t.Errorf("default, redirect: Content-Security-Policy %q", got)
	}

	resp = e.do("GET", grafana+"/graph/", nil)
	if body := readAll(t, resp); !strings.Contains(body, "<script>") {
		t.Errorf("web app body changed: %q", body)
	}
	if got := resp.Header.Values("Content-Security-Policy"); len(got) != 1 || got[0] != "default-src 'self'" {
		t.Errorf("web app: Content-Security-Policy %q, want the service's only", got)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("web app: X-Content-Type-Options %q", got)
	}
	cookies := resp.Header.Values("Set-Cookie")
	want := []string{"session=1; Path=" + grafana + "/; HttpOnly", "pref=dark; Path=" + grafana + "/graph"}
	if strings.Join(cookies, "|") != strings.Join(want, "|") {
		t.Errorf("web app: Set-Cookie %q, want %q", cookies, want)
	}
}

func TestWebAppsValidated(t *testing.T) {
	for _, bad := range []string{"alpha", "alpha/", "/web", "alpha/we b", "*/web"} {
		_, err := kasd.New(kasd.Config{WebApps: []string{bad}})
		if err == nil || !strings.Contains(err.Error(), "web app") {
			t.Errorf("WebApps %q: err %v", bad, err)
		}
	}
}
