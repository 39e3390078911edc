package kasd_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// zeroBody is a request body of n zero bytes (not an in-memory reader net/http knows).
type zeroBody struct{ n int64 }

func (z *zeroBody) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), z.n)]
	clear(p)
	z.n -= int64(len(p))
	return len(p), nil
}

// Through a real agentd, a service that answers a large upload without reading it (and keeps
// its connection open) has its answer reach the client. agentd wrote the whole request body to
// the service before reading its response: it blocked until the client gave up.
func TestAgentServiceEarlyAnswerToLargeUpload(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(release); ln.Close(); wg.Wait() }()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
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
				io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
				<-release // reads no more, the connection open
			})
		}
	})
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": "http://" + ln.Addr().String()})
	waitConnected(t, a, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	const size = 50 << 20
	req, _ := http.NewRequestWithContext(ctx, "POST", e.url("/api/v1/agents/alpha/proxy/web/upload"), &zeroBody{size})
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+e.token())
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("the service's early answer did not reach the client: %v", err)
	}
	if got := readAll(t, resp); resp.StatusCode != http.StatusUnauthorized || got != "nope" {
		t.Fatalf("got %d %q, want the service's 401 \"nope\"", resp.StatusCode, got)
	}
}

// Through a real agentd, a full-duplex service (it echoes each part of the body as it reads
// it) works with a client that sends the next part only once it has seen the echo of the
// previous one. It deadlocked in agentd, which wrote the whole body before reading the
// response.
func TestAgentServiceFullDuplexEcho(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	}))
	defer svc.Close()
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	parts := []string{"ping1", "ping2", "ping3"}
	pr, pw := io.Pipe()
	echoed := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		for _, part := range parts {
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
	req, _ := http.NewRequestWithContext(ctx, "POST", e.url("/api/v1/agents/alpha/proxy/web/echo"), pr)
	req.Header.Set("Authorization", "Bearer "+e.token())
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, readAll(t, resp))
	}
	for _, part := range parts {
		got := make([]byte, len(part))
		if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != part {
			t.Fatalf("echo %q, %v; want %q", got, err, part)
		}
		echoed <- struct{}{}
	}
	if rest, err := io.ReadAll(resp.Body); len(rest) != 0 || err != nil {
		t.Fatalf("after the echoes %q, %v", rest, err)
	}
}
