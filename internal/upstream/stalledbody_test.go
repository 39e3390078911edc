package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// A client that sends the first bytes of a chunked upload and then waits for the answer
// (full duplex) must not hold the exchange: at the response's end (the service answered early)
// and at the request's deadline (the service answers nothing), the body writer is blocked in a
// Read of the request body, and stop() ends it by closing the body. agentd's body
// (httpstream.NewRequest) is such a body: its Close stops the stream, as the pipe reader's
// ends a Read of it here. (A body whose Close interrupts nothing is still waited for: see
// bodyWriter.stop.)
func TestEarlyAnswerWhileClientStalls(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [5]byte
		_, _ = io.ReadFull(r.Body, b[:])
		if r.URL.Path == "/silent" {
			<-release
			return
		}
		// Connection: close, or net/http's server would read the rest of the body before it
		// sends the head.
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, "got "+string(b[:]))
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	u, _ := url.Parse(srv.URL)
	up := New(u, Options{})
	t.Cleanup(up.CloseIdleConnections)
	for _, tc := range []struct {
		path     string
		deadline time.Duration
		want     string
	}{
		{"/early", 0, "got first <nil>"},
		{"/silent", 200 * time.Millisecond, "error: " + context.DeadlineExceeded.Error()},
	} {
		t.Run(tc.path, func(t *testing.T) {
			pr, pw := io.Pipe()
			t.Cleanup(func() { _ = pw.Close() })
			go func() { _, _ = pw.Write([]byte("first")) }() // then the client waits
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				t.Cleanup(cancel)
			}
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+tc.path, pr)
			req.ContentLength = -1
			done := make(chan string, 1)
			go func() {
				resp, err := up.RoundTrip(req)
				if err != nil {
					done <- "error: " + err.Error()
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				done <- string(b) + " " + errString(err)
			}()
			select {
			case got := <-done:
				if got != tc.want {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			case <-time.After(3 * time.Second):
				_ = pw.CloseWithError(errors.New("test over"))
				<-done
				t.Fatal("the exchange waited for the client's next body bytes")
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
