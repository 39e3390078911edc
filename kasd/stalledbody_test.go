package kasd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// earlyAnswerService answers a POST with 401 after the first 5 bytes of its body (and a GET with
// 200, for fleetEnv.warmLinks). Connection: close
// lets net/http's server answer at once: it would otherwise read the rest of the body (up to
// 256 KiB) before it sends the head, and a client that waits for the answer would never get
// one, qkas or not.
func earlyAnswerService(t *testing.T) *httptest.Server {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			return
		}
		var b [5]byte
		_, _ = io.ReadFull(r.Body, b[:])
		w.Header().Set("Connection", "close")
		http.Error(w, "nope", http.StatusUnauthorized)
	}))
	t.Cleanup(svc.Close)
	return svc
}

// stalledUpload POSTs a chunked body to url that sends 5 bytes and then waits (as a
// full-duplex client waits for an answer before it sends more), and returns the response's
// status and body; it fails the test if no complete answer comes within 5 s.
func stalledUpload(t *testing.T, client *http.Client, url, token string) (int, string) {
	t.Helper()
	pr, pw := io.Pipe()
	t.Cleanup(func() { _ = pw.Close() })
	go func() { _, _ = pw.Write([]byte("first")) }()
	req, _ := http.NewRequest("POST", url, pr)
	req.Header.Set("Authorization", "Bearer "+token)
	type answer struct {
		status int
		body   string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			done <- answer{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- answer{resp.StatusCode, string(b), err}
	}()
	select {
	case a := <-done:
		if a.err != nil {
			t.Fatalf("a complete answer ended with an error: %v (status %d, body %q)", a.err, a.status, a.body)
		}
		return a.status, a.body
	case <-time.After(5 * time.Second):
		t.Fatal("the service's answer did not reach the client in 5s: it waits for the client's next body bytes")
		return 0, ""
	}
}

// End to end with the real agentd: a service answers a chunked upload after its first bytes
// while the client waits for the answer before it sends more. agentd's body writer to the
// service was blocked reading the client's next bytes from the stream, the response's end
// waited for it (upBody.finish), and the answer, held by the ResponseWriter until the handler
// returned, never left: the request body's Close did not interrupt its Read. It now stops the
// stream's receive side (STOP_SENDING code 0), and kasd ends the upload and relays the answer.
func TestEarlyAnswerReachesStalledClient(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		e := newEnv(t)
		svc := earlyAnswerService(t)
		waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)
		st, body := stalledUpload(t, e.client, e.url("/api/v1/agents/alpha/proxy/web/upload"), e.token())
		if st != http.StatusUnauthorized || body != "nope\n" {
			t.Fatalf("got %d %q, want 401 \"nope\\n\"", st, body)
		}
	})
	t.Run("forwarded", func(t *testing.T) {
		f := newFleetEnv(t, 2)
		svc := earlyAnswerService(t)
		f.startAgent("alpha", "pod-1", svc.URL, f.nodes[1:2], 1)
		f.waitHolders("alpha", "kas-1")
		f.warmLinks(f.nodes[0], "alpha", 3)
		st, body := stalledUpload(t, f.client, f.nodes[0].api.URL+"/api/v1/agents/alpha/proxy/web/upload", f.token())
		if st != http.StatusUnauthorized || body != "nope\n" {
			t.Fatalf("got %d %q, want 401 \"nope\\n\"", st, body)
		}
	})
}
