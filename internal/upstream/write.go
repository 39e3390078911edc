package upstream

import (
	"bufio"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// writeHead writes the head of a request without a body exactly as req.Write would, without
// fmt and without growing the calling goroutine's stack (Request.Write's Fprintf calls were the
// largest item of agentd's upstream path in profiles). It reports false, having written
// nothing, for any request outside the common case it covers (a body, a trailer, Close, a
// Host or URL that Request.Write would rewrite or refuse, a header value that it would
// sanitise, CONNECT); the caller then uses req.Write. FuzzWriteHead holds the two equal.
func writeHead(bw *bufio.Writer, req *http.Request) bool {
	if (req.Body != nil && req.Body != http.NoBody) || req.ContentLength != 0 ||
		len(req.Trailer) > 0 || len(req.TransferEncoding) > 0 || req.Close || req.URL == nil {
		return false
	}
	method := req.Method
	if method == "" {
		method = "GET"
	}
	if method == "CONNECT" {
		return false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !plainHost(host) {
		return false
	}
	ruri := req.URL.RequestURI()
	if hasCTL(ruri) {
		return false
	}
	userAgent, sendUA := "Go-http-client/1.1", true
	if vs, ok := req.Header["User-Agent"]; ok {
		userAgent = ""
		if len(vs) > 0 {
			userAgent = vs[0]
		}
		if userAgent != "" && !plainValue(userAgent) {
			return false
		}
		sendUA = userAgent != ""
	}
	// Header lines, sorted by key as Header.Write sorts them; any value Request.Write would
	// rewrite (CR, LF, surrounding blanks) or drop (an invalid name) sends the request the slow
	// way.
	var arr [24]string
	keys := arr[:0]
	for k, vs := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return false // Request.Write drops it
		}
		for _, v := range vs {
			if !plainValue(v) {
				return false
			}
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)

	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(ruri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if sendUA {
		bw.WriteString("User-Agent: ")
		bw.WriteString(userAgent)
		bw.WriteString("\r\n")
	}
	// Request.Write sends Content-Length: 0 for a body-less POST, PUT or PATCH (many servers
	// expect one).
	if method == "POST" || method == "PUT" || method == "PATCH" {
		bw.WriteString("Content-Length: 0\r\n")
	}
	for _, k := range keys {
		for _, v := range req.Header[k] {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
	return true
}

// plainHost: a Host value that Request.Write sends unchanged (ASCII, valid, no IPv6 zone).
func plainHost(h string) bool {
	for i := 0; i < len(h); i++ {
		if h[i] >= 0x80 || h[i] == '%' {
			return false
		}
	}
	return httpguts.ValidHostHeader(h)
}

// plainValue: a header value that Request.Write sends unchanged (no CR or LF, nothing for
// textproto.TrimString to trim).
func plainValue(v string) bool {
	if v == "" {
		return true
	}
	if isBlank(v[0]) || isBlank(v[len(v)-1]) {
		return false
	}
	return !strings.ContainsAny(v, "\r\n")
}

func isBlank(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\n' }

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}
