package runner

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// The TCP relay reference passes every byte both ways, keeps a client's keep-alive connection
// on one upstream connection, and returns, with its relays gone, when its context ends, even
// with connections still open (goleak in TestMain checks the goroutines).
func TestRelayTCP(t *testing.T) {
	var mu sync.Mutex
	remotes := map[string]bool{}
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes[r.RemoteAddr] = true
		mu.Unlock()
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(append([]byte("echo:"), b...))
	}))
	defer svc.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relayTCP(ctx, ln, svc.Listener.Addr().String()) }()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for i := range 20 {
		body := bytes.Repeat([]byte{byte('a' + i)}, 1<<uint(i%17))
		resp, err := c.Post("http://"+ln.Addr().String()+"/", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, append([]byte("echo:"), body...)) {
			t.Fatalf("request %d: %d bytes back (err %v), want the %d sent behind echo:", i, len(got), err, len(body))
		}
	}
	mu.Lock()
	n := len(remotes)
	mu.Unlock()
	if n != 1 {
		t.Errorf("the service saw %d connections for one keep-alive client connection, want 1", n)
	}

	// A connection still open when the context ends is closed by the relay.
	open, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	fmt.Fprintf(open, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 1)
	if _, err := open.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relayTCP did not return after its context ended")
	}
	_ = open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, open); err != nil {
		t.Errorf("the open connection was not closed by the relay: %v", err)
	}
}
