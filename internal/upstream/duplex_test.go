package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// zeros is a body of n zero bytes that is not an in-memory reader net/http knows.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), z.n)]
	clear(p)
	z.n -= int64(len(p))
	return len(p), nil
}

func (z *zeros) Close() error { return nil }

func idleCount(up *Client) int {
	up.mu.Lock()
	defer up.mu.Unlock()
	return len(up.idle)
}

// A service that answers a large upload early without reading it gets its answer to the
// client, as net/http's Transport returns it: net/http's server (which discards at most 256 KiB
// of an unread body and then closes) and a service that just stops reading. The request body
// used to be written whole before the response was read: the client got "connection reset"
// or waited until the deadline. The connection, whose request was not written whole, is not
// pooled.
func TestUpstreamEarlyAnswerToLargeUpload(t *testing.T) {
	const size = 50 << 20
	t.Run("net/http", func(t *testing.T) {
		// net/http's server sends its answer and FIN, waits 500ms and closes the connection
		// (a reset, the body unread). On loopback the answer then still sits in the client's
		// socket and was read after the failed write; over a network the reset may overtake
		// it. The answer must be read before the service closes.
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		}))
		closed := make(chan struct{})
		srv.Listener = &closeSignalListener{Listener: srv.Listener, closed: closed}
		srv.Start()
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		up := New(u, Options{})
		t.Cleanup(up.CloseIdleConnections)
		checkEarlyAnswer(t, up, srv.URL, size, http.StatusRequestEntityTooLarge, "too large\n")
		select {
		case <-closed:
			t.Error("the answer was read only after the service closed the connection")
		default:
		}
	})
	t.Run("stops reading", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		var wg sync.WaitGroup
		t.Cleanup(func() { close(release); ln.Close(); wg.Wait() })
		wg.Go(func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) <= 2 {
					break
				}
			}
			// A keep-alive answer, then no more reading while the connection stays open.
			io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
			<-release
		})
		u, _ := url.Parse("http://" + ln.Addr().String())
		up := New(u, Options{})
		t.Cleanup(up.CloseIdleConnections)
		checkEarlyAnswer(t, up, u.String(), size, http.StatusUnauthorized, "nope")
	})
}

// closeSignalListener's connections close closed when the server starts closing one.
type closeSignalListener struct {
	net.Listener
	closed chan struct{}
	once   sync.Once
}

func (l *closeSignalListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &closeSignalConn{Conn: c, l: l}, nil
}

type closeSignalConn struct {
	net.Conn
	l *closeSignalListener
}

func (c *closeSignalConn) Close() error {
	c.l.once.Do(func() { close(c.l.closed) })
	return c.Conn.Close()
}

func checkEarlyAnswer(t *testing.T, up *Client, srvURL string, size int64, status int, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srvURL+"/upload", &zeros{size})
	req.ContentLength = size
	resp, err := up.RoundTrip(req)
	if err != nil {
		t.Fatalf("the service's early answer was lost: %v (cause %q)", err, PublicCause(err))
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status || string(b) != body || err != nil {
		t.Fatalf("got %d %q (%v), want %d %q", resp.StatusCode, b, err, status, body)
	}
	if ctx.Err() != nil {
		t.Fatal("answered only at the deadline")
	}
	if n := idleCount(up); n != 0 {
		t.Errorf("%d idle connections: a connection whose request body was not written whole was pooled", n)
	}
}

// A full-duplex service (it echoes each part of the body as it reads it) works with a client
// that sends the next part only once it has seen the echo of the previous one. It used to
// deadlock: the body was written whole before the response was read.
func TestUpstreamFullDuplexEcho(t *testing.T) {
	up, srv, conns := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				_ = rc.Flush()
			}
			if err != nil {
				return
			}
		}
	}), Options{})
	for round := range 2 { // the second on the pooled connection
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pr, pw := io.Pipe()
		echoed := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for _, part := range []string{"ping1", "ping2", "ping3"} {
				if _, err := pw.Write([]byte(part)); err != nil {
					return
				}
				select {
				case <-echoed:
				case <-ctx.Done():
					pw.CloseWithError(errors.New("no echo"))
					return
				}
			}
			pw.Close()
		})
		req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/echo", pr)
		resp, err := up.RoundTrip(req)
		if err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("round %d: %v", round, err)
		}
		for _, part := range []string{"ping1", "ping2", "ping3"} {
			got := make([]byte, len(part))
			if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != part {
				cancel()
				wg.Wait()
				t.Fatalf("round %d: echo %q, %v; want %q", round, got, err, part)
			}
			echoed <- struct{}{}
		}
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		wg.Wait()
		if len(rest) != 0 || err != nil {
			t.Fatalf("round %d: after the echoes %q, %v", round, rest, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 2 full-duplex exchanges, want 1 (pooled once the body was written whole and the response read)", n)
	}
}

// brokenBody fails after some bytes, as a client's upload cut mid-way.
type brokenBody struct{ sent bool }

var errUploadCut = errors.New("client upload cut")

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.sent {
		return 0, errUploadCut
	}
	b.sent = true
	return copy(p, "part of the body"), nil
}

func (b *brokenBody) Close() error { return nil }

// A request body that fails mid-way ends the exchange with the body's error (the service,
// which waits for the rest of the body, is not waited for until the deadline) and its
// connection is closed.
func TestUpstreamRequestBodyError(t *testing.T) {
	got := make(chan error, 1)
	up, srv, _ := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
	}), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/upload", &brokenBody{})
	req.ContentLength = 1 << 20
	resp, err := up.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a request whose body failed got %d", resp.StatusCode)
	}
	if ctx.Err() != nil {
		t.Fatalf("the body's failure was reported only at the deadline: %v", err)
	}
	if !strings.Contains(errors.Unwrap(err).Error(), errUploadCut.Error()) {
		t.Errorf("error %v (%v), want the body's", err, errors.Unwrap(err))
	}
	select {
	case err := <-got:
		if err == nil {
			t.Error("the service took the truncated body for a complete one")
		}
	case <-time.After(5 * time.Second):
		t.Error("the service still waits for the rest of the body")
	}
	if n := idleCount(up); n != 0 {
		t.Errorf("%d idle connections after a failed request body", n)
	}
}

// A request with Expect: 100-continue gets its final response (the 100 is skipped while the
// body is written) and its connection is pooled once the body was written whole.
func TestUpstreamExpectContinue(t *testing.T) {
	up, srv, conns := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body) // net/http's server sends 100 Continue on this read
		io.WriteString(w, "got "+string(b))
	}), Options{})
	for range 2 {
		req, _ := http.NewRequest("PUT", srv.URL+"/", io.NopCloser(strings.NewReader("payload")))
		req.ContentLength = int64(len("payload"))
		req.Header.Set("Expect", "100-continue")
		resp, err := up.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "got payload" || err != nil {
			t.Fatalf("%d %q %v", resp.StatusCode, b, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 2 requests, want 1", n)
	}
}

// The request's context ends an upload that the service neither reads nor answers: RoundTrip
// returns, and the body writer, blocked on the connection, is stopped and waited for (TestMain
// checks that no goroutine is left).
func TestUpstreamContextEndsUpload(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(release); ln.Close(); wg.Wait() }()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-release // reads nothing, answers nothing
	})
	u, _ := url.Parse("http://" + ln.Addr().String())
	up := New(u, Options{})
	defer up.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", u.String()+"/upload", &zeros{50 << 20})
	req.ContentLength = 50 << 20
	if resp, err := up.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatal("no error")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v, want the context's", err)
	}
}
