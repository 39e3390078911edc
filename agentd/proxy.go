package agentd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// HTTP CONNECT proxies, for the TCP transport only (transport.go). QUIC is never sent to a
// proxy.

// maxProxyResponseHeader bounds the proxy's answer to CONNECT.
const maxProxyResponseHeader = 16 << 10

// proxyError is a failure to reach kasd through the proxy, with its connect code
// (proxy_unreachable, proxy_auth_required, proxy_refused; connerr.go).
type proxyError struct {
	code   ConnectCode
	status int // the proxy's HTTP status, 0 if none
	err    error
}

func (e *proxyError) Error() string {
	if e.status != 0 {
		return fmt.Sprintf("proxy: %s (HTTP %d): %v", e.code, e.status, e.err)
	}
	return fmt.Sprintf("proxy: %s: %v", e.code, e.err)
}

func (e *proxyError) Unwrap() error { return e.err }

// dialConnect opens a TCP connection to target ("host:port") through the HTTP proxy at
// proxyURL (http://, or https:// for TLS to the proxy; user:password@ adds basic auth),
// bounded by ctx. The connection returned carries target's bytes.
func dialConnect(ctx context.Context, proxyURL *url.URL, target string) (net.Conn, error) {
	host := proxyURL.Host
	if proxyURL.Port() == "" {
		port := "80"
		if proxyURL.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(proxyURL.Hostname(), port)
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, &proxyError{code: ConnectProxyUnreachable, err: err}
	}
	if proxyURL.Scheme == "https" {
		tc := tls.Client(c, &tls.Config{ServerName: proxyURL.Hostname(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, &proxyError{code: ConnectProxyUnreachable, err: fmt.Errorf("TLS to the proxy: %w", err)}
		}
		c = tc
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: target},
		Host:   target,
		Header: http.Header{"User-Agent": {"agentd"}},
	}
	if u := proxyURL.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(c); err != nil {
		c.Close()
		return nil, &proxyError{code: ConnectProxyUnreachable, err: err}
	}
	br := bufio.NewReaderSize(&limitedReader{r: c, n: maxProxyResponseHeader}, 4<<10)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		return nil, &proxyError{code: ConnectProxyRefused, err: fmt.Errorf("reading the answer to CONNECT: %w", err)}
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusProxyAuthRequired || resp.StatusCode == http.StatusUnauthorized:
		// 407 is the standard answer; some proxies (tinyproxy) answer wrong credentials with 401.
		c.Close()
		return nil, &proxyError{code: ConnectProxyAuth, status: resp.StatusCode, err: fmt.Errorf("CONNECT %s: %s", target, resp.Status)}
	case resp.StatusCode/100 != 2:
		c.Close()
		return nil, &proxyError{code: ConnectProxyRefused, status: resp.StatusCode, err: fmt.Errorf("CONNECT %s: %s", target, resp.Status)}
	}
	if br.Buffered() > 0 {
		// The proxy never speaks first after 200 (TLS starts with our ClientHello).
		c.Close()
		return nil, &proxyError{code: ConnectProxyRefused, err: fmt.Errorf("CONNECT %s: the proxy sent bytes after its answer", target)}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// limitedReader reads at most n bytes from r, then reports the header too long.
type limitedReader struct {
	r net.Conn
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("proxy answer longer than %d bytes", maxProxyResponseHeader)
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}
