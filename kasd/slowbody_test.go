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
