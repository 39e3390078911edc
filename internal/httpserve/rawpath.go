package httpserve

import (
	"net/http"
	"net/url"
	"strings"
)

// EscapedPath returns the path of r as its client sent it, escaped: the request target's path
// (r.RequestURI up to '?'), with every byte that may not appear as such in an escaped path
// percent-encoded, and the escapes the client made (%2F above all) kept.
//
// r.URL.EscapedPath() does not do this: when the raw path holds a byte Go would have escaped
// ('|', '{', '"', raw UTF-8…), url.URL drops RawPath and EscapedPath escapes the decoded Path
// again, so "/group%2Fproject/a|b" became "/group/project/a%7Cb": one path segment turned into
// two on the way to the service. An absolute-form or "*" target, or one whose path does not
// decode to r.URL.Path, falls back to r.URL.EscapedPath().
func EscapedPath(r *http.Request) string {
	raw := r.RequestURI
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	if !strings.HasPrefix(raw, "/") || r.URL == nil {
		if r.URL == nil {
			return ""
		}
		return r.URL.EscapedPath()
	}
	p := escapeInvalid(raw)
	if u, err := url.PathUnescape(p); err != nil || u != r.URL.Path {
		return r.URL.EscapedPath()
	}
	return p
}

// KeepRawPath sets r.URL.RawPath to EscapedPath(r), so that r.URL.EscapedPath() and
// r.URL.String() — and everything that forwards r.URL — keep the client's escapes.
func KeepRawPath(r *http.Request) {
	if r.URL == nil {
		return
	}
	if p := EscapedPath(r); p != r.URL.EscapedPath() {
		r.URL.RawPath = p
	}
}

// escapeInvalid percent-encodes the bytes of p that an escaped path may not hold as such:
// what RFC 3986 allows in a path (unreserved, sub-delims, ':', '@', '/') and well-formed %XX
// escapes are kept; anything else, a stray '%' included, becomes %XX.
func escapeInvalid(p string) string {
	n := 0
	for i := 0; i < len(p); i++ {
		if !pathByteOK(p, i) {
			n++
		}
	}
	if n == 0 {
		return p
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(p)+2*n)
	for i := 0; i < len(p); i++ {
		c := p[i]
		if pathByteOK(p, i) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	return string(b)
}

func pathByteOK(p string, i int) bool {
	c := p[i]
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '%':
		return i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2])
	}
	return strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
