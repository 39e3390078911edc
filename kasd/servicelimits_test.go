package kasd_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
)

// rawService answers every request on its connection with respond's bytes (a service that
// misbehaves in ways net/http's server cannot).
func rawService(t *testing.T, respond func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if l == "\r\n" {
						break
					}
				}
				respond(c)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// startRawAgent starts agent alpha with the service raw at svc and returns its metrics.
func startRawAgent(t *testing.T, e *env, svc string) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	a := e.startAgent("alpha", "pod-1", map[string]string{"raw": svc}, func(c *agentd.Config) { c.Registerer = reg })
	waitConnected(t, a, 1)
	return reg
}

// Every limit a service's answer can hit at agentd is counted in agentd_limit_rejections_total
// and named in the client's error (found by the limits audit: only a head that parsed and then
// did not fit a frame was counted; more than 8 interim responses said "request failed").
func TestServiceAnswerLimitsCounted(t *testing.T) {
	for _, tc := range []struct {
		name, reason, want string
		respond            func(c net.Conn)
	}{
		{"head over the read limit", "response_head_too_large", "response head too large", func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Long: %s\r\nContent-Length: 2\r\n\r\nok", strings.Repeat("b", 100<<10))
		}},
		{"too many interim responses", "too_many_informational", "more than 8 interim (1xx) responses", func(c net.Conn) {
			for range 9 {
				fmt.Fprintf(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			reg := startRawAgent(t, e, rawService(t, tc.respond))
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/raw/x", nil)
			body := readAll(t, resp)
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "service_unavailable" || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %s %s, want 502 service_unavailable saying %q", resp.StatusCode, resp.Header.Get(api.HeaderError), body, tc.want)
			}
			if n := counter(t, reg, "agentd_limit_rejections_total", map[string]string{"reason": tc.reason}); n != 1 {
				t.Errorf("agentd_limit_rejections_total{reason=%s} = %v, want 1", tc.reason, n)
			}
		})
	}
}

// A service's chunked response whose trailers are over what a trailers frame may carry (more
// than 512 fields) or over what agentd reads (32 KiB): the client's response is cut after the
// body (never ended as complete without its trailers), as the service's failure — kasd counted
// it as agent_failed, the agent blamed for its service's answer — and agentd counts the limit.
// Trailers within the limits pass.
func TestServiceTrailerLimits(t *testing.T) {
	chunked := func(trailer func(c net.Conn)) func(c net.Conn) {
		return func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
			trailer(c)
			fmt.Fprintf(c, "\r\n")
		}
	}
	for _, tc := range []struct {
		name    string
		respond func(c net.Conn)
		cut     bool
	}{
		{"too many fields", chunked(func(c net.Conn) {
			for i := range api.MaxHeaderFields + 88 {
				fmt.Fprintf(c, "X-T%d: v\r\n", i)
			}
		}), true},
		{"over the read buffer", chunked(func(c net.Conn) { fmt.Fprintf(c, "X-T: %s\r\n", strings.Repeat("t", 40000)) }), true},
		{"within the limits", chunked(func(c net.Conn) { fmt.Fprintf(c, "X-T: %s\r\n", strings.Repeat("t", 3000)) }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			reg := startRawAgent(t, e, rawService(t, tc.respond))
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/raw/x", nil)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case !tc.cut:
				if resp.StatusCode != 200 || string(b) != "hello" || err != nil || len(resp.Trailer.Get("X-T")) != 3000 {
					t.Fatalf("trailers within the limits: %d %q %v, X-T of %d bytes", resp.StatusCode, b, err, len(resp.Trailer.Get("X-T")))
				}
				return
			case resp.StatusCode == 200:
				// The head and body had gone before the trailers were read: cut.
				if string(b) != "hello" || err == nil {
					t.Fatalf("200 %q (%v): the response ended as complete without its trailers", b, err)
				}
			default:
				// The trailers came with the body, before anything was sent: a typed 502.
				if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "service_unavailable" {
					t.Fatalf("%d %s %q, want 502 service_unavailable or a cut 200", resp.StatusCode, resp.Header.Get(api.HeaderError), b)
				}
			}
			waitCounter(t, reg, "agentd_limit_rejections_total", map[string]string{"reason": "response_trailers_too_large"}, 1)
			waitCounter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "service_unavailable"}, 1)
			time.Sleep(50 * time.Millisecond)
			if n := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "agent_failed"}); n != 0 {
				t.Errorf("kasd_api_errors_total{code=agent_failed} = %v: the agent blamed for its service's trailers", n)
			}
		})
	}
}

// A client's chunked request trailer over what net/http reads (its 4 KiB buffer) is the
// client's fault: 400 bad_request saying so, not a message about the agent acknowledging
// nothing (the limits audit), and not retried on another holder.
func TestClientRequestTrailerOverReadBuffer(t *testing.T) {
	e := newEnv(t)
	var served atomic.Int64
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(svc.Close)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)
	for _, size := range []int{3000, 5000} {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: %s\r\n\r\n", e.token(), strings.Repeat("t", size))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		c.Close()
		if size == 3000 {
			if resp.StatusCode != 200 {
				t.Fatalf("a %d-byte trailer: %d %s", size, resp.StatusCode, body)
			}
			continue
		}
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(api.HeaderError) != "bad_request" || strings.Contains(body, "acknowledged") || !strings.Contains(body, "trailer") {
			t.Fatalf("a %d-byte trailer: %d %s %s, want 400 bad_request about the trailer", size, resp.StatusCode, resp.Header.Get(api.HeaderError), body)
		}
	}
	if n := counter(t, e.reg, "kasd_retries_total", nil); n != 0 {
		t.Errorf("kasd_retries_total = %v: a client's broken body was retried", n)
	}
}
