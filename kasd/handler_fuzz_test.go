package kasd

import (
	"math"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// proxyPath is the writer of what parseProxyPath reads: "{agent}/proxy/{service}{rest}".
func proxyPath(agent, service, rest string) string {
	return url.PathEscape(agent) + proxyInfix + url.PathEscape(service) + rest
}

// dotElement reports a "." or ".." element of the decoded path, split at / and \: what a backend
// that decodes and normalises the path would climb with.
func dotElement(escaped string) bool {
	dec, err := url.PathUnescape(escaped)
	if err != nil {
		return true
	}
	for _, e := range strings.FieldsFunc(dec, func(r rune) bool { return r == '/' || r == '\\' }) {
		e, _, _ = strings.Cut(e, ";") // a path parameter: "..;x" is ".." to servlet containers
		if e == "." || e == ".." {
			return true
		}
	}
	// FieldsFunc drops empty fields only; "." and ".." are never empty.
	return false
}

func FuzzParseProxyPath(f *testing.F) {
	for _, s := range [][3]string{
		{"demo", "web", "/"}, {"demo", "web", "/a/b?c"}, {"a.b-c_d", "kubernetes", "/api/v1/pods"},
		{"12", "metrics", "/x%2Fy"}, {"demo", "web", ""},
	} {
		f.Add(proxyPath(s[0], s[1], s[2]))
	}
	for _, s := range []string{
		"", "demo", "demo/proxy", "demo/proxy/", "demo/proxy/web", "demo/proxy/web/../x", "demo/proxy/web/%2e%2e/x",
		"demo/proxy/web/a%2F..%2Fb", `demo/proxy/web/a\..\b`, "de%6Do/proxy/web/", "%2e%2e/proxy/web/", "demo/proxy/%/x",
		"demo/proxy/web/%zz", ".demo/proxy/web/", "demo/proxy/web/a%5c..", "demo/proxy/web/%252e%252e/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		agent, service, rest, ok := parseProxyPath(p)
		if !ok {
			return
		}
		if !validName(agent) || !validName(service) {
			t.Fatalf("%q: invalid names %q, %q accepted", p, agent, service)
		}
		if !strings.HasPrefix(rest, "/") {
			t.Fatalf("%q: rest %q without a leading slash", p, rest)
		}
		if dotElement(rest) {
			t.Fatalf("%q: rest %q climbs with a dot element", p, rest)
		}
		// The writer's form of the same request parses to the same parts.
		a2, s2, r2, ok2 := parseProxyPath(proxyPath(agent, service, rest))
		if !ok2 || a2 != agent || s2 != service || r2 != rest {
			t.Fatalf("%q: rewritten %q parses to %q %q %q %v", p, proxyPath(agent, service, rest), a2, s2, r2, ok2)
		}
	})
}

func FuzzHasDotSegment(f *testing.F) {
	for _, s := range []string{
		"", "/", "/a/b", ".", "..", "/a/./b", "/a/../b", "%2e", "%2E%2e", "/a%2f..%2fb", `/a\..\b`, "/a%5c..",
		"/%", "/%zz", "/...", "/.a", "/a.", "/%252e%252e", "/a/%2e%2e%2f", "./", "a/..",
		"/..;/admin", "/a/.;x/b", "/a/%2e%2e%3bx", "/a;b/c", "/;", "/..x;",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if got, want := hasDotSegment(p), dotElement(p); got != want {
			// hasDotSegment decodes per segment, so an escape split by a raw "/" is still caught
			// (it fails to decode): it may refuse more, never less.
			if !got && want {
				t.Fatalf("hasDotSegment(%q) = false, but it decodes to a dot element", p)
			}
			if _, err := url.PathUnescape(p); err == nil {
				t.Fatalf("hasDotSegment(%q) = %v, decoded path says %v", p, got, want)
			}
		}
	})
}

func FuzzParseTimeout(f *testing.F) {
	for _, d := range []time.Duration{time.Second, 30 * time.Second, 1500 * time.Millisecond, time.Hour, time.Nanosecond} {
		f.Add(d.String())
		f.Add(strconv.FormatFloat(d.Seconds(), 'f', -1, 64))
	}
	for _, s := range []string{"", "0", "-1", "NaN", "Inf", "+Inf", "-Inf", "1e400", "1e-300", "9223372037", "0x10", "1_0", "1h1m", "-5s", "0s", " 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, err := parseTimeout(v)
		if err != nil {
			return
		}
		n, ferr := strconv.ParseFloat(v, 64)
		if ferr != nil {
			if want, _ := time.ParseDuration(v); d != want {
				t.Fatalf("parseTimeout(%q) = %v, ParseDuration says %v", v, d, want)
			}
			return
		}
		// Seconds: positive, finite or saturated, and never negative.
		if !(n > 0) || d < 0 {
			t.Fatalf("parseTimeout(%q) = %v, want an error or a positive duration", v, d)
		}
		if want := n * float64(time.Second); want < float64(math.MaxInt64)/2 && math.Abs(float64(d)-want) > 1+want*1e-9 {
			t.Fatalf("parseTimeout(%q) = %v, want about %v ns", v, d, want)
		}
	})
}
