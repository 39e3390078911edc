package httpserve

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// serve starts a Server with limits l on loopback and returns its address and metrics; it is
// shut down when the test ends.
func serve(t *testing.T, l Limits, h http.Handler) (string, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	}
	s, err := New("api", h, l, m)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Serve(ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() {
		_ = s.Close()
		wg.Wait()
	})
	return ln.Addr().String(), m
}

func hits(m *Metrics, reason string) float64 {
	return value(m.hits.WithLabelValues("api", reason))
}

// get sends one keep-alive GET on c and reads the response.
func get(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// waitClosed returns how long until the server closes c (reads EOF), failing after max.
func waitClosed(t *testing.T, c net.Conn, br *bufio.Reader, max time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(max))
	_, err := br.ReadByte()
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", max)
	}
	return time.Since(start)
}

func TestIdleTimeoutClosesAndCounts(t *testing.T) {
	addr, m := serve(t, Limits{IdleTimeout: 300 * time.Millisecond}, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get(t, c, br)
	if d := waitClosed(t, c, br, 5*time.Second); d < 250*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", d)
	}
	waitFor(t, func() bool { return hits(m, ReasonIdleTimeout) == 1 })
	if n := value(m.conns.WithLabelValues("api")); n != 0 {
		t.Fatalf("http_connections = %v after close", n)
	}
}

func TestClientCloseIsNotIdleTimeout(t *testing.T) {
	addr, m := serve(t, Limits{IdleTimeout: time.Minute}, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	get(t, c, br)
	c.Close()
	waitFor(t, func() bool { return value(m.conns.WithLabelValues("api")) == 0 })
	if n := hits(m, ReasonIdleTimeout); n != 0 {
		t.Fatalf("idle_timeout counted %v times for a client close", n)
	}
}

func TestReadHeaderTimeoutCounts(t *testing.T) {
	addr, m := serve(t, Limits{ReadHeaderTimeout: 200 * time.Millisecond}, nil)
	// A new connection that sends half a header, and an idle one whose next request stalls.
	c1, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	_, _ = io.WriteString(c1, "GET / HTTP/1.1\r\nHo")
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	br2 := bufio.NewReader(c2)
	get(t, c2, br2)
	_, _ = io.WriteString(c2, "GET / HTTP/1.1\r\nHo")
	// And a slowloris: a header line every 50 ms. net/http reads again past the deadline, and
	// such a connection was counted twice (found by an independent security review).
	c3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	_, _ = io.WriteString(c3, "GET / HTTP/1.1\r\n")
	for range 10 {
		if _, err := io.WriteString(c3, "X-A: b\r\n"); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitClosed(t, c1, bufio.NewReader(c1), 5*time.Second)
	waitClosed(t, c2, br2, 5*time.Second)
	waitClosed(t, c3, bufio.NewReader(c3), 5*time.Second)
	waitFor(t, func() bool { return hits(m, ReasonReadHeaderTimeout) >= 3 })
	time.Sleep(300 * time.Millisecond)
	if n := hits(m, ReasonReadHeaderTimeout); n != 3 {
		t.Fatalf("read_header_timeout counted %v times for 3 connections", n)
	}
	if n := hits(m, ReasonIdleTimeout); n != 0 {
		t.Fatalf("idle_timeout counted %v times", n)
	}
}

func TestMaxHeaderBytesCounts(t *testing.T) {
	// A handler's own 431 is not the limit.
	addr, m := serve(t, Limits{MaxHeaderBytes: 1 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
	}))
	for _, size := range []int{100, 64 << 10} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("a", size))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	if n := hits(m, ReasonMaxHeaderBytes); n != 1 {
		t.Fatalf("max_header_bytes counted %v times, want 1", n)
	}
}

func TestMaxConnectionsHoldsExcess(t *testing.T) {
	const max = 3
	addr, m := serve(t, Limits{MaxConnections: max}, nil)
	var held []net.Conn
	for range max {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		get(t, c, br)
		held = append(held, c)
	}
	// The fourth connects (the kernel's backlog) but is not served while the three stay open.
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if _, err := io.WriteString(extra, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	ebr := bufio.NewReader(extra)
	_ = extra.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := ebr.ReadByte(); err == nil {
		t.Fatal("a connection beyond the cap was served")
	}
	waitFor(t, func() bool { return hits(m, ReasonMaxConnections) == 1 })
	if n := value(m.conns.WithLabelValues("api")); n != max {
		t.Fatalf("http_connections = %v, want %d", n, max)
	}
	// One closes: the held connection is served.
	held[0].Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(ebr, nil)
	if err != nil {
		t.Fatalf("held connection not served after a slot freed: %v", err)
	}
	resp.Body.Close()
}

func TestListenerCloseReleasesWaitingAccept(t *testing.T) {
	m, _ := NewMetrics(nil, "test")
	s, _ := New("api", http.NotFoundHandler(), Limits{MaxConnections: 1}, m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lln := s.Listener(ln)
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, err := lln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	errc := make(chan error, 1)
	go func() { _, err := lln.Accept(); errc <- err }()
	time.Sleep(100 * time.Millisecond)
	lln.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Accept past the cap returned a connection after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting after Close")
	}
}

func TestValidate(t *testing.T) {
	for _, l := range []Limits{{IdleTimeout: -1}, {MaxConnections: -1}, {MaxHeaderBytes: -1}, {ReadHeaderTimeout: -1}} {
		if _, err := New("x", http.NotFoundHandler(), l, nil); err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
	if _, err := New("x", http.NotFoundHandler(), Limits{}, nil); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal(fmt.Sprint("condition not met: ", ctx.Err()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// value reads a counter's or gauge's value.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// slowConn makes every read after the first wait: a server goroutine that a loaded machine has
// not run yet, while the client's next request already sits in the socket.
type slowConn struct {
	*net.TCPConn
	reads atomic.Int32
	delay time.Duration
}

func (c *slowConn) Read(p []byte) (int, error) {
	if c.reads.Add(1) > 1 {
		time.Sleep(c.delay)
	}
	return c.TCPConn.Read(p)
}

type slowListener struct {
	net.Listener
	delay time.Duration
}

func (l slowListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &slowConn{TCPConn: nc.(*net.TCPConn), delay: l.delay}, nil
}

// Shutdown does not cut a keep-alive connection whose next request has arrived but not yet
// been read (http.Server.Shutdown closes it as idle: the client's request is lost); it serves
// the request, then closes the connection, closes quiet idle connections at once, refuses new
// connections, and Serve returns nil.
func TestShutdownServesRequestWaitingOnIdleConnection(t *testing.T) {
	s, ln := serveOK(t, func(ln net.Listener) net.Listener { return slowListener{Listener: ln, delay: 300 * time.Millisecond} })

	busy, err := net.Dial("tcp", ln.Addr().String()) // its next request will be waiting
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	quiet, err := net.Dial("tcp", ln.Addr().String()) // stays idle
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	bb, bq := bufio.NewReader(busy), bufio.NewReader(quiet)
	get(t, busy, bb)
	get(t, quiet, bq)
	// Both idle at the server (their goroutines asleep in the next read).
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		idle := 0
		for c := range s.conns {
			if http.ConnState(c.state.Load()) == http.StateIdle {
				idle++
			}
		}
		return idle == 2
	})
	if _, err := io.WriteString(busy, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // in the socket, not read: the server's read is asleep
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()

	// The quiet connection is closed at once; no new connection is taken.
	waitClosed(t, quiet, bq, 5*time.Second)
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("a new connection was accepted during Shutdown")
	}
	// The waiting request is served.
	_ = busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bb, nil)
	if err != nil {
		t.Fatalf("the request waiting on the idle connection was cut: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// A connection accepted just before Shutdown, whose client has not written its request yet, is
// given newConnGrace for it: it was closed at once (empty), and its client's request, written a
// moment later, was cut (POSTs lost at every kasd rolling restart, a draining kasd's
// Connection: close sending every request of a busy client on a new connection). A new
// connection that sends nothing is still closed after the grace.
func TestShutdownServesFirstRequestOfNewConnection(t *testing.T) {
	s, ln := serveOK(t, nil)

	late, err := net.Dial("tcp", ln.Addr().String()) // its request comes after Shutdown began
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	silent, err := net.Dial("tcp", ln.Addr().String()) // never sends anything
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns) == 2
	})
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	time.Sleep(200 * time.Millisecond)
	if _, err := io.WriteString(late, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"); err != nil {
		t.Fatal(err)
	}
	_ = late.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(late), nil)
	if err != nil {
		t.Fatalf("the first request of a connection accepted before Shutdown was cut: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	waitClosed(t, silent, bufio.NewReader(silent), 5*time.Second)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took < newConnGrace-100*time.Millisecond {
			t.Errorf("Shutdown returned after %v, before the silent connection's grace", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// serveOK serves "ok" to every request on a loopback listener (wrapped by wrap, if set) until
// the test ends, then closes the server and waits for Serve.
func serveOK(t *testing.T, wrap func(net.Listener) net.Listener) (*Server, net.Listener) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New("api", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }), Limits{}, m)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := ln
	if wrap != nil {
		served = wrap(ln)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Serve(served); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() {
		s.Close()
		wg.Wait()
	})
	return s, ln
}
