package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// headBoth writes req with writeHead and with Request.Write; ok reports whether writeHead
// covered it.
func headBoth(t testing.TB, req *http.Request) (fast, std string, ok bool) {
	var a, b bytes.Buffer
	bw := bufio.NewWriter(&a)
	ok = writeHead(bw, req)
	bw.Flush()
	if !ok && a.Len() > 0 {
		t.Fatalf("writeHead declined after writing %q", a.String())
	}
	if err := req.Write(&b); err != nil {
		return a.String(), "error: " + err.Error(), ok
	}
	return a.String(), b.String(), ok
}

// The fast head writer covers agentd's ordinary requests and writes them byte for byte as
// Request.Write does; what it does not cover it leaves to Request.Write untouched.
func TestWriteHeadMatchesRequestWrite(t *testing.T) {
	u, _ := url.Parse("http://svc.ns.svc:9090/api/v1/query?query=up&time=1")
	cases := []struct {
		name  string
		build func(r *http.Request)
		fast  bool
	}{
		{"agentd GET", func(r *http.Request) {
			r.Header = http.Header{"User-Agent": {""}, "Accept": {"application/json"}, "X-Forwarded-For": {"10.0.0.1"}, "Accept-Encoding": {"gzip"}, "Traceparent": {"00-aa-bb-01"}}
		}, true},
		{"default user agent", func(r *http.Request) { r.Header = http.Header{} }, true},
		{"nil header", func(r *http.Request) { r.Header = nil }, true},
		{"explicit Host", func(r *http.Request) { r.Host = "example.com:8080" }, true},
		{"DELETE", func(r *http.Request) { r.Method = "DELETE" }, true},
		{"PATCH without body", func(r *http.Request) { r.Method = "PATCH" }, true},
		{"POST without body", func(r *http.Request) { r.Method = "POST" }, true},
		{"HEAD", func(r *http.Request) { r.Method = "HEAD" }, true},
		{"repeated values in order", func(r *http.Request) { r.Header = http.Header{"X-A": {"1", "2", "3"}, "Cookie": {"a=b"}} }, true},
		{"excluded keys", func(r *http.Request) {
			r.Header = http.Header{"Content-Length": {"5"}, "Transfer-Encoding": {"chunked"}, "Trailer": {"X"}, "Host": {"evil"}}
		}, true},
		{"value with CR LF", func(r *http.Request) { r.Header = http.Header{"X-A": {"a\r\nX-Injected: 1"}} }, false},
		{"value with blanks", func(r *http.Request) { r.Header = http.Header{"X-A": {" a "}} }, false},
		{"invalid key", func(r *http.Request) { r.Header = http.Header{"X A": {"1"}} }, false},
		{"user agent to trim", func(r *http.Request) { r.Header = http.Header{"User-Agent": {"a\n"}} }, false},
		{"Close", func(r *http.Request) { r.Close = true }, false},
		{"body", func(r *http.Request) {
			r.Method = "POST"
			r.Body = io.NopCloser(strings.NewReader("x"))
			r.ContentLength = 1
		}, false},
		{"IPv6 zone", func(r *http.Request) { r.Host = "[fe80::1%25eth0]:80" }, false},
		{"non-ASCII host", func(r *http.Request) { r.Host = "bücher.example" }, false},
		{"CONNECT", func(r *http.Request) { r.Method = "CONNECT" }, false},
	}
	for _, c := range cases {
		req := &http.Request{Method: "GET", URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
		c.build(req)
		fast, std, ok := headBoth(t, req)
		if ok != c.fast {
			t.Errorf("%s: fast path %v, want %v", c.name, ok, c.fast)
			continue
		}
		if ok && fast != std {
			t.Errorf("%s: writeHead\n%q\nRequest.Write\n%q", c.name, fast, std)
		}
	}
}

// The fast path allocates nothing beyond the request URI.
func TestWriteHeadAllocations(t *testing.T) {
	u, _ := url.Parse("http://svc:9090/api/v1/query?query=up")
	req := &http.Request{Method: "GET", URL: u, Header: http.Header{"User-Agent": {""}, "Accept": {"*/*"}, "X-Forwarded-For": {"10.0.0.1"}}}
	bw := bufio.NewWriter(io.Discard)
	if n := testing.AllocsPerRun(100, func() {
		if !writeHead(bw, req) {
			t.Fatal("not covered")
		}
	}); n > 1 {
		t.Errorf("%v allocations per head, want ≤ 1", n)
	}
}

// FuzzWriteHead: whenever writeHead covers a request, its bytes are Request.Write's.
func FuzzWriteHead(f *testing.F) {
	f.Add("GET", "http://svc:80/a/b?c=d", "", "Accept", "*/*", "X-A", "1")
	f.Add("POST", "http://[::1]:80/", "h.example", "User-Agent", "", "Cookie", "a=b; c=d")
	f.Add("DELETE", "https://svc/%2Fx", "", "User-Agent", "curl/8", "X-B", "v\tw")
	f.Add("", "http://svc/", "host:1", "x-lower", "v", "Content-Length", "3")
	f.Fuzz(func(t *testing.T, method, rawURL, host, k1, v1, k2, v2 string) {
		u, err := url.Parse(rawURL)
		if err != nil {
			return
		}
		req := &http.Request{Method: method, URL: u, Host: host, Header: http.Header{k1: {v1}, k2: {v2, v1}}}
		fast, std, ok := headBoth(t, req)
		if ok && fast != std {
			t.Fatalf("writeHead\n%q\nRequest.Write\n%q", fast, std)
		}
	})
}
