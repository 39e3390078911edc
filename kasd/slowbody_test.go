package kasd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A service that answers at once with a body of known length, then is slow with the rest of
// the body, answered: Qkas-Timeout (and --response-header-timeout) bound the wait for the head
// only. agentd held the head back with the first body bytes until 16 KiB or the body's end, so
// kasd's header timeout fired (504) although the service had answered in milliseconds (found
// by a differential review).
func TestSlowKnownLengthBodyHeadIsNotHeld(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, strings.Repeat("a", 10))
		w.(http.Flusher).Flush()
		time.Sleep(1500 * time.Millisecond)
		io.WriteString(w, strings.Repeat("b", 990))
	}))
	defer svc.Close()
	e := newEnv(t)
	waitConnected(t, e.startAgent("alpha", "r1", map[string]string{"web": svc.URL}), 1)
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/slow", nil, "Qkas-Timeout", "500ms")
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != strings.Repeat("a", 10)+strings.Repeat("b", 990) {
		t.Fatalf("%d %.200q; want 200 and the whole body: the service answered at once", resp.StatusCode, body)
	}
}

// The bytes of a known-length body that kasd has read reach its client before kasd waits for
// more, the head with them: net/http's writer buffered them (4 KiB) until the buffer filled or
// the body ended, so a service sending a sized body slowly (a progress log, a slow export) was
// seen by the client in 4 KiB steps, and its head only with the first (a test service sending
// 9 bytes every 50 ms kept its client waiting 20 s for the head).
func TestSlowKnownLengthBodyBytesAreNotHeld(t *testing.T) {
	release := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, strings.Repeat("a", 10))
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, strings.Repeat("b", 990))
	}))
	defer svc.Close()
	defer close(release)
	e := newEnv(t)
	waitConnected(t, e.startAgent("alpha", "r1", map[string]string{"web": svc.URL}), 1)
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/slow"), nil)
	req.Header.Set("Authorization", "Bearer "+e.token())
	got := make(chan string, 1)
	go func() {
		resp, err := e.client.Do(req)
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b := make([]byte, 10)
		n, _ := io.ReadFull(resp.Body, b)
		got <- string(b[:n])
	}()
	select {
	case b := <-got:
		if b != strings.Repeat("a", 10) {
			t.Fatalf("first bytes %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the body's first 10 bytes, sent at once, had not reached the client 5 s later")
	}
}
