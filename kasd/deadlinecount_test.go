package kasd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/qkas/qkas/kasd"
)

// A Qkas-Deadline that passes before the response head is answered 504 deadline_exceeded but
// never counted as kasd_limit_rejections_total{reason="qkas_deadline"} (a Qkas-Timeout is, as
// qkas_timeout; README: "qkas_timeout and qkas_deadline for the client's Qkas-Timeout and
// Qkas-Deadline").
func TestDeadlineBeforeHeadIsCounted(t *testing.T) {
	f := newFleetEnv(t, 1)
	svc := namedService(t, "alpha")
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	for _, h := range []string{"Qkas-Timeout", "Qkas-Deadline"} {
		req, _ := http.NewRequest("GET", f.nodes[0].api.URL+"/api/v1/agents/alpha/proxy/web/slow?sleep=2s", nil)
		req.Header.Set("Authorization", "Bearer "+f.token())
		req.Header.Set(h, "300ms")
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 504 {
			t.Fatalf("%s: %d %s", h, resp.StatusCode, body)
		}
		t.Logf("%s: %d %s", h, resp.StatusCode, body)
	}
	for _, reason := range []string{"qkas_timeout", "qkas_deadline"} {
		if n := counter(t, f.nodes[0].promReg, "kasd_limit_rejections_total", map[string]string{"reason": reason}); n != 1 {
			t.Errorf("kasd_limit_rejections_total{reason=%q} = %v, want 1", reason, n)
		}
	}
}

// A service that sent the head of a response of known length and is slow to send its first
// byte did answer: its head reaches the client at once, on both routes, as it would direct
// (agentd and kasd flush a head before a read that would wait: httpstream.CopyBody). agentd
// used to hold such a head until the body's first bytes, and a first byte later than the
// header timeout (an export being made) got the client 504 where, direct, it had its head at
// once (independent review). When the Qkas-Deadline then passes, or the service's connection
// dies before the body, the body is cut (the client reads an unexpected EOF, as direct), and
// the deadline is counted as qkas_deadline once.
func TestKnownLengthSlowFirstByteHeadFirst(t *testing.T) {
	f := newFleetEnv(t, 2)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stall" && r.URL.Path != "/break" {
			io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		if r.URL.Path == "/break" {
			time.Sleep(200 * time.Millisecond)
			panic(http.ErrAbortHandler) // the service's connection dies before the body
		}
		select {
		case <-r.Context().Done():
		case <-time.After(6 * time.Second):
		}
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	f.warmLinks(f.nodes[1], "alpha", 1)
	for _, c := range []struct {
		node            int
		path, hdr, name string
	}{
		{0, "/stall", "Qkas-Deadline", "local deadline"},
		{1, "/stall", "Qkas-Deadline", "forwarded deadline"},
		{0, "/break", "", "local break"},
		{1, "/break", "", "forwarded break"},
	} {
		req, _ := http.NewRequest("GET", f.nodes[c.node].api.URL+"/api/v1/agents/alpha/proxy/web"+c.path, nil)
		req.Header.Set("Authorization", "Bearer "+f.token())
		if c.hdr != "" {
			req.Header.Set(c.hdr, "3s")
		}
		start := time.Now()
		resp, err := f.client.Do(req)
		if err != nil {
			t.Errorf("%s: no answer: %v", c.name, err)
			continue
		}
		head := time.Since(start)
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != 1000 {
			t.Errorf("%s: %d, Content-Length %d; want the service's 200 head", c.name, resp.StatusCode, resp.ContentLength)
		}
		if c.path == "/stall" && head > 2*time.Second {
			t.Errorf("%s: the head came after %v, with the deadline, not when the service sent it", c.name, head)
		}
		if rerr == nil || len(b) != 0 {
			t.Errorf("%s: body %d bytes, %v; want it cut", c.name, len(b), rerr)
		}
	}
	var n float64
	for _, nd := range f.nodes {
		n += counter(t, nd.promReg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_deadline"})
	}
	if n != 2 {
		t.Errorf("qkas_deadline counted %v times, want 2", n)
	}
}

// A client's Qkas-Timeout or Qkas-Deadline longer than --response-header-timeout is the bound on
// the wait for its head: a service that answers after kasd's bound but within the client's (a
// slow Prometheus query) reaches the client. kasd answered 504 at its own bound whatever the
// client asked (independent streaming review). Without either header, kasd's bound holds.
func TestClientTimeoutLongerThanHeaderTimeout(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Second)
		io.WriteString(w, "late")
	}))
	t.Cleanup(svc.Close)
	e := newEnv(t, func(c *kasd.Config) { c.ResponseHeaderTimeout = 300 * time.Millisecond })
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	for _, c := range []struct {
		hdr    []string
		status int
	}{
		{nil, http.StatusGatewayTimeout},
		{[]string{"Qkas-Timeout", "5s"}, http.StatusOK},
		{[]string{"Qkas-Deadline", "5s"}, http.StatusOK},
	} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/q", nil, c.hdr...)
		if body := readAll(t, resp); resp.StatusCode != c.status {
			t.Errorf("%v: %d %q, want %d", c.hdr, resp.StatusCode, body, c.status)
		}
	}
}
