package httpserve

import (
	"bufio"
	"net/url"
	"strings"
	"testing"

	"net/http"
)

func readRequest(t testing.TB, target string) *http.Request {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
	if err != nil {
		t.Fatalf("net/http refuses %q: %v", target, err)
	}
	return r
}

func TestEscapedPathKeepsClientEscapes(t *testing.T) {
	for _, tc := range []struct{ target, want string }{
		{"/a/b", "/a/b"},
		{"/group%2Fproject/files", "/group%2Fproject/files"},
		// url.URL drops RawPath for these and EscapedPath() decodes %2F into a segment break.
		{"/group%2Fproject/files/a|b", "/group%2Fproject/files/a%7Cb"},
		{"/a%2Fb/{x}?q=1", "/a%2Fb/%7Bx%7D"},
		{"/a%2fb/\"q\"", "/a%2fb/%22q%22"},
		{"/caf\xc3\xa9%2F", "/caf%C3%A9%2F"},
		{"/x;y=1/@:!$&'()*+,=~", "/x;y=1/@:!$&'()*+,=~"},
		{"http://host/abs%2Fform", "/abs%2Fform"}, // absolute form: url.URL's view
		{"/%25%20", "/%25%20"},
	} {
		r := readRequest(t, tc.target)
		if got := EscapedPath(r); got != tc.want {
			t.Errorf("EscapedPath(%q) = %q, want %q (r.URL.EscapedPath() %q)", tc.target, got, tc.want, r.URL.EscapedPath())
		}
		KeepRawPath(r)
		if got := r.URL.EscapedPath(); got != tc.want {
			t.Errorf("after KeepRawPath(%q): URL.EscapedPath() = %q, want %q", tc.target, got, tc.want)
		}
	}
}

// FuzzEscapedPath: for any request net/http accepts, the escaped path is valid, decodes to
// r.URL.Path, and keeps every %2F the client sent (counted case-insensitively).
func FuzzEscapedPath(f *testing.F) {
	for _, s := range []string{"/a/b", "/group%2Fproject/a|b", "/%zz", "/a%2f{b}", "/caf\xc3\xa9", "*", "http://h/x%2Fy|z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		if strings.ContainsAny(target, " \r\n") {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
		if err != nil {
			return
		}
		p := EscapedPath(r)
		if u, err := url.PathUnescape(p); err != nil || u != r.URL.Path {
			t.Fatalf("EscapedPath(%q) = %q decodes to %q (%v), want %q", target, p, u, err, r.URL.Path)
		}
		if !strings.HasPrefix(target, "/") {
			return
		}
		raw, _, _ := strings.Cut(target, "?")
		if want := strings.Count(strings.ToUpper(raw), "%2F"); strings.Count(strings.ToUpper(p), "%2F") < want {
			t.Fatalf("EscapedPath(%q) = %q lost a %%2F", target, p)
		}
		KeepRawPath(r)
		if got := r.URL.EscapedPath(); got != p {
			t.Fatalf("after KeepRawPath(%q): %q, want %q", target, got, p)
		}
	})
}
