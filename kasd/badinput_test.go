package kasd_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// fakeAgent is a hand-written agent: it dials kasd's agent listener over real QUIC with the
// agent ALPN, authenticates with a valid token (Hello, Welcome), then hands every request
// stream kasd opens to handle, after reading its head. handle answers with whatever bytes it
// likes. The test's cleanup closes the connection and waits for every handler.
type fakeAgent struct {
	qc      *quicgo.Conn
	streams atomic.Int64 // request streams received
	mu      sync.Mutex   // guards targets
	targets []string     // the target of every request received, in order
}

func (e *env) startFakeAgent(id string, services []string, handle func(sc *quic.StreamConn, f *api.Request)) *fakeAgent {
	e.t.Helper()
	return e.startFakeReplica(id, "fake-"+id, services, handle)
}

// readRequestBody reads what a fake agent gets of f's body on sc: raw bytes ended by FIN, or
// (api.FlagFramed: declared trailers, or a chunked HTTP/1.1 body) the payloads of its data
// frames up to its trailers frame.
func readRequestBody(sc *quic.StreamConn, f *api.Request) ([]byte, error) {
	if !f.Has(api.FlagFramed) {
		return io.ReadAll(sc)
	}
	var b []byte
	for {
		m, err := api.ReadFrame(sc)
		if err != nil {
			return b, err
		}
		switch m := m.(type) {
		case *api.Data:
			b = append(b, m.Payload...)
		case *api.Trailers:
			return b, nil
		}
	}
}

// startFakeReplica is startFakeAgent for one of several replicas of the agent.
func (e *env) startFakeReplica(id, replica string, services []string, handle func(sc *quic.StreamConn, f *api.Request)) *fakeAgent {
	t := e.t
	t.Helper()
	qc, d := e.agentHandshake(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens[id], AgentVersion: "fake", Replica: replica, Services: services})
	fa := &fakeAgent{qc: qc}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := qc.AcceptStream(qc.Context())
			if err != nil {
				return
			}
			sc := quic.NewStreamConn(qc, st)
			wg.Go(func() {
				_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
				f, err := httpstream.ReadRequest(sc)
				if err != nil {
					sc.Abort(quic.StreamCodeInternal)
					return
				}
				_ = sc.SetReadDeadline(time.Time{})
				fa.streams.Add(1)
				fa.mu.Lock()
				fa.targets = append(fa.targets, f.Target)
				fa.mu.Unlock()
				handle(sc, f)
			})
		}
	})
	t.Cleanup(func() {
		_ = qc.CloseWithError(quic.ConnCodeNoError, "test over")
		wg.Wait()
		d.Close()
	})
	return fa
}

// agentHandshake dials kasd's agent listener and sends hello; it returns once kasd has
// welcomed the connection. The caller closes the connection and the dialer.
func (e *env) agentHandshake(hello *api.Hello) (*quicgo.Conn, *quic.Dialer) {
	e.t.Helper()
	return agentHandshakeTo(e.t, e.caFile, e.agentUDP, hello)
}

// agentHandshakeTo dials addr as an agent and completes the hello with a kasd that trusts caFile.
func agentHandshakeTo(t *testing.T, caFile, addr string, hello *api.Hello) (*quicgo.Conn, *quic.Dialer) {
	t.Helper()
	qc, _, _, d := agentHandshakeFull(t, caFile, addr, hello)
	return qc, d
}

// agentHandshakeFull is agentHandshakeTo that also returns the control stream and kasd's Welcome.
func agentHandshakeFull(t *testing.T, caFile, addr string, hello *api.Hello) (*quicgo.Conn, *quicgo.Stream, *api.Welcome, *quic.Dialer) {
	t.Helper()
	qc, control, w, d, err := sendHello(t, caFile, addr, hello)
	if err != nil {
		t.Fatalf("agent handshake: %v", err)
	}
	return qc, control, w, d
}

// sendHello dials addr as an agent, sends hello and reads kasd's answer: a Welcome, or the
// error that refused the connection (an *api.Error for a refusal). The caller closes the
// connection and the dialer.
func sendHello(t *testing.T, caFile, addr string, hello *api.Hello) (*quicgo.Conn, *quicgo.Stream, *api.Welcome, *quic.Dialer, error) {
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(caFile, "localhost", api.ALPNAgent)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := d.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	control, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.WriteFrame(control, hello); err != nil {
		t.Fatal(err)
	}
	_ = control.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := api.ReadExpect(control, api.TypeWelcome)
	if err != nil {
		return qc, control, nil, d, err
	}
	_ = control.SetReadDeadline(time.Time{})
	return qc, control, m.(*api.Welcome), d, nil
}

// TestAgentHelloFieldsBounded: the Hello fields kasd keeps are bounded (api.MaxReplicaLen,
// MaxProcessLen, MaxAgentVersionLen; the version printable too): a violation is refused as
// bad_request before the token is checked and counted by field, and fields at their bounds
// are accepted. The replica name and process id of every connection are published in the
// agent's registry key: unbounded, a process id of a few KiB per connection made that key
// larger than etcd accepts, and this kasd stopped publishing
// (registry.TestOversizeAgentValueIsTruncated).
func TestAgentHelloFieldsBounded(t *testing.T) {
	e := newEnv(t)
	for i, tc := range []struct {
		name   string
		edit   func(h *api.Hello)
		reason string // kasd_limit_rejections_total's; "" for a connection that is accepted
	}{
		{"at the bounds", func(h *api.Hello) {
			h.Replica = strings.Repeat("r", api.MaxReplicaLen)
			h.Process = strings.Repeat("p", api.MaxProcessLen)
			h.AgentVersion = strings.Repeat("v", api.MaxAgentVersionLen)
		}, ""},
		{"replica too long", func(h *api.Hello) { h.Replica = strings.Repeat("r", api.MaxReplicaLen+1) }, "hello_replica"},
		{"process too long", func(h *api.Hello) { h.Process = strings.Repeat("p", api.MaxProcessLen+1) }, "hello_process"},
		{"process of 15 KiB", func(h *api.Hello) { h.Process = strings.Repeat("p", 15<<10) }, "hello_process"},
		{"agent version too long", func(h *api.Hello) { h.AgentVersion = strings.Repeat("v", api.MaxAgentVersionLen+1) }, "hello_agent_version"},
		{"agent version not printable", func(h *api.Hello) { h.AgentVersion = "v1\x1b[2J" }, "hello_agent_version"},
		// Shown to operators as the version is (they were accepted: malicious-agent review).
		{"replica not printable", func(h *api.Hello) { h.Replica = "pod-1\r\nfake line" }, "hello_replica"},
		{"process not printable", func(h *api.Hello) { h.Process = "p\x00" }, "hello_process"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hello := &api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], AgentVersion: "v1",
				Replica: "pod-1", Process: fmt.Sprint("p", i), Services: []string{"web"}}
			tc.edit(hello)
			labels := map[string]string{"reason": tc.reason}
			before := counter(t, e.reg, "kasd_limit_rejections_total", labels)
			qc, _, _, d, err := sendHello(t, e.caFile, e.agentUDP, hello)
			defer d.Close()
			defer qc.CloseWithError(0, "")
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if code := api.CodeOf(err); code != api.CodeBadRequest {
				t.Fatalf("answered %v (code %v), want a bad_request refusal", err, code)
			}
			if n := counter(t, e.reg, "kasd_limit_rejections_total", labels) - before; n != 1 {
				t.Errorf("kasd_limit_rejections_total{reason=%q} grew by %v, want 1", tc.reason, n)
			}
		})
	}
}

func (fa *fakeAgent) seen() []string {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return append([]string(nil), fa.targets...)
}

// parallel runs n requests at once and returns their results in order.
func parallel[T any](n int, f func(i int) T) []T {
	out := make([]T, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i] = f(i) })
	}
	wg.Wait()
	return out
}

// loadClient is an HTTP client for hundreds of concurrent requests.
func loadClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 400}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// kasdError is the outcome of a request as the tests check it: status, Qkas-Error header and
// the error body's message.
type kasdError struct {
	status  int
	code    string
	message string
	err     error
}

func (e *env) doError(client *http.Client, method, path string, body io.Reader) kasdError {
	req, _ := http.NewRequest(method, e.url(path), body)
	req.Header.Set("Authorization", "Bearer "+e.token())
	resp, err := client.Do(req)
	if err != nil {
		return kasdError{err: err}
	}
	defer resp.Body.Close()
	out := kasdError{status: resp.StatusCode, code: resp.Header.Get(api.HeaderError)}
	if he := api.ReadHTTPError(resp); he != nil {
		out.message = he.Message
	}
	return out
}

// A response head declaring more than api.MaxHeadSize is refused from its frame header: every
// client gets a 502 agent_failed naming the agent, the limit is counted, and kasd never reads
// the payload (the fake's writes beyond the flow-control window fail with kasd's STOP_SENDING,
// and the heap stays bounded with many such requests at once).
func TestAgentResponseHeadTooLarge(t *testing.T) {
	const n = 200
	e := newEnv(t)
	var stopped atomic.Int64
	fa := e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		// A response head declaring 16 MiB, then payload until kasd stops the stream.
		if _, err := sc.Write([]byte{byte(api.TypeResponse), 0xff, 0xff, 0xff}); err != nil {
			return
		}
		chunk := make([]byte, 64<<10)
		for range 8 << 20 / len(chunk) { // more than any receive window kasd grants
			if _, err := sc.Write(chunk); err != nil {
				var se *quicgo.StreamError
				if errors.As(err, &se) && se.Remote {
					stopped.Add(1)
				}
				return
			}
		}
	})
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	peak := sampleHeap(t)
	client := loadClient(t)
	results := parallel(n, func(i int) kasdError {
		return e.doError(client, "GET", fmt.Sprintf("/api/v1/agents/alpha/proxy/web/%d", i), nil)
	})
	growth := int64(peak()) - int64(base.HeapInuse)
	for i, r := range results {
		if r.status != http.StatusBadGateway || r.code != "agent_failed" || !strings.Contains(r.message, "agent alpha") {
			t.Fatalf("request %d: %+v; want 502 agent_failed naming agent alpha", i, r)
		}
	}
	if got := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "response_head_too_large"}); got != n {
		t.Errorf("response_head_too_large rejections = %v, want %d", got, n)
	}
	if got := fa.streams.Load(); got != n {
		t.Errorf("the fake agent got %d streams for %d requests: an oversize head must not be retried", got, n)
	}
	waitFor(t, "every oversize payload to be stopped by kasd", func() bool { return stopped.Load() == n })
	// 200 × 16 MiB declared: reading the payloads would take gigabytes.
	if growth > 256<<20 {
		t.Errorf("heap grew by %d MiB during %d oversize heads", growth>>20, n)
	}
}

// sampleHeap samples HeapInuse until the returned function is called, which returns the peak.
func sampleHeap(t *testing.T) func() uint64 {
	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	var once sync.Once
	done := func() uint64 {
		once.Do(func() { close(stop); wg.Wait() })
		return peak
	}
	t.Cleanup(func() { done() })
	return done
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Endless 1xx responses: kasd reads api.MaxInformational of them, then gives up with a 502.
func TestAgentEndlessInformational(t *testing.T) {
	const n = 50
	e := newEnv(t)
	var sentMax atomic.Int64
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		info := api.AppendFrame(nil, &api.Response{Status: 103, Header: []api.KV{{Key: "Link", Value: "</style.css>; rel=preload"}}})
		for i := 1; ; i++ {
			if _, err := sc.Write(info); err != nil {
				if int64(i) > sentMax.Load() {
					sentMax.Store(int64(i))
				}
				return
			}
		}
	})
	client := loadClient(t)
	for i, r := range parallel(n, func(i int) kasdError {
		return e.doError(client, "GET", "/api/v1/agents/alpha/proxy/web/", nil)
	}) {
		if r.status != http.StatusBadGateway || r.code != "agent_failed" || !strings.Contains(r.message, "agent alpha") {
			t.Fatalf("request %d: %+v; want 502 agent_failed naming agent alpha", i, r)
		}
	}
	if got := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "too_many_informational"}); got != n {
		t.Errorf("too_many_informational rejections = %v, want %d", got, n)
	}
}

// Garbage instead of a response: every kind is a 502 agent_failed naming the agent, under load.
func TestAgentGarbageResponses(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(rnd.UintN(256))
	}
	cases := map[string][]byte{
		"/http1":           []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
		"/random":          random,
		"/unknown-frame":   {7, 0, 0, 2, 'h', 'i'},
		"/data-first":      api.AppendFrame(nil, &api.Data{Payload: []byte("hi")}),
		"/trailers-first":  api.AppendFrame(nil, &api.Trailers{}),
		"/request-back":    api.AppendFrame(nil, &api.Request{Kind: api.KindHTTP, Service: "web", Method: "GET", Target: "/"}),
		"/truncated-head":  api.AppendFrame(nil, &api.Response{Status: 200, Header: []api.KV{{Key: "A", Value: "b"}}})[:6],
		"/bad-varint":      {byte(api.TypeResponse), 0, 0, 11, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"/status-99":       api.AppendFrame(nil, &api.Response{Status: 99}),
		"/status-1000":     api.AppendFrame(nil, &api.Response{Status: 1000}),
		"/101-plain":       api.AppendFrame(nil, &api.Response{Status: 101, ContentLength: -1}),
		"/bad-header-name": api.AppendFrame(nil, &api.Response{Status: 200, Header: []api.KV{{Key: "bad name", Value: "x"}}}),
		"/header-crlf":     api.AppendFrame(nil, &api.Response{Status: 200, Header: []api.KV{{Key: "X-A", Value: "a\r\nX-B: b"}}}),
		"/cl-below-minus1": api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -7}),
		"/accepted-then-eof": append(api.AppendFrame(nil, &api.Accepted{}),
			api.AppendFrame(nil, &api.Response{Status: 200})[:3]...),
		"/fin": nil, // FIN and nothing else
	}
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		sc.Write(cases[f.Target])
		sc.Close()
	})
	var targets []string
	for target := range cases {
		targets = append(targets, target)
	}
	const perCase = 10
	client := loadClient(t)
	results := parallel(len(targets)*perCase, func(i int) kasdError {
		return e.doError(client, "GET", "/api/v1/agents/alpha/proxy/web"+targets[i%len(targets)], nil)
	})
	for i, r := range results {
		if r.status != http.StatusBadGateway || r.code != "agent_failed" || !strings.Contains(r.message, "agent alpha") {
			t.Errorf("%s: %+v; want 502 agent_failed naming agent alpha", targets[i%len(targets)], r)
		}
	}
}

// An agent that resets the stream, or ends it early, after a 200 head: the client's response is
// cut (an error reading it), never a complete body.
func TestAgentResetMidBody(t *testing.T) {
	const size = 100000
	full := strings.Repeat("x", size)
	// Server-Sent Events are flushed to the client per read, so kasd cannot count on its own
	// write buffer to hold back the last bytes of a body that turns out bad.
	headType := func(cl int64, flags uint64, contentType string) []byte {
		return api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: cl, Flags: flags, Header: []api.KV{{Key: "Content-Type", Value: contentType}}})
	}
	head := func(cl int64, flags uint64) []byte { return headType(cl, flags, "text/plain") }
	cases := map[string]func(sc *quic.StreamConn){
		"/reset-known": func(sc *quic.StreamConn) {
			sc.Write(append(head(size, 0), full[:size/2]...))
			time.Sleep(20 * time.Millisecond) // let the head and half the body reach the client
			sc.Abort(quic.StreamCodeInternal)
		},
		"/reset-unknown": func(sc *quic.StreamConn) {
			sc.Write(append(head(-1, 0), full[:size/2]...))
			time.Sleep(20 * time.Millisecond)
			sc.Abort(quic.StreamCodeInternal)
		},
		"/reset-framed": func(sc *quic.StreamConn) {
			sc.Write(api.AppendFrame(head(-1, api.FlagFramed), &api.Data{Payload: []byte(full[:size/2])}))
			time.Sleep(20 * time.Millisecond)
			sc.Abort(quic.StreamCodeInternal)
		},
		"/reset-after-full": func(sc *quic.StreamConn) { // every declared byte, then a failure
			sc.Write(append(head(size, 0), full...))
			time.Sleep(20 * time.Millisecond)
			sc.Abort(quic.StreamCodeInternal)
		},
		"/reset-after-full-flushed": func(sc *quic.StreamConn) {
			sc.Write(append(headType(size, 0, "text/event-stream"), full...))
			time.Sleep(20 * time.Millisecond)
			sc.Abort(quic.StreamCodeInternal)
		},
		"/too-long-flushed": func(sc *quic.StreamConn) {
			sc.Write(append(headType(size, 0, "text/event-stream"), full+"tail"...))
			sc.Close()
		},
		"/fin-short": func(sc *quic.StreamConn) {
			sc.Write(append(head(size, 0), full[:size/2]...))
			sc.Close()
		},
		"/framed-no-trailers": func(sc *quic.StreamConn) {
			sc.Write(api.AppendFrame(head(-1, api.FlagFramed), &api.Data{Payload: []byte(full[:size/2])}))
			sc.Close()
		},
		"/too-long": func(sc *quic.StreamConn) {
			sc.Write(append(head(size, 0), full+"tail"...))
			sc.Close()
		},
	}
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		cases[f.Target](sc)
	})
	var targets []string
	for target := range cases {
		targets = append(targets, target)
	}
	const perCase = 20
	client := loadClient(t)
	tok := e.token()
	type outcome struct {
		complete bool
		detail   string
	}
	results := parallel(len(targets)*perCase, func(i int) outcome {
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web"+targets[i%len(targets)]), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			return outcome{false, "request: " + err.Error()}
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		detail := fmt.Sprintf("%d, %d bytes, %v", resp.StatusCode, len(b), err)
		// A complete answer: a 200 whose body was read to its end without error.
		return outcome{resp.StatusCode == 200 && err == nil, detail}
	})
	for i, r := range results {
		if r.complete {
			t.Errorf("%s: the client got a complete response (%s), want a cut one", targets[i%len(targets)], r.detail)
		}
	}
}

// Qkas-Error is kasd's alone: an agent cannot forge one, in the head or in trailers, and
// hop-by-hop fields it sends do not reach the client.
func TestAgentForgedQkasError(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		hdr := []api.KV{
			{Key: "Qkas-Error", Value: "overloaded"},
			{Key: "qkas-error", Value: "agent_not_connected"},
			{Key: "Retry-After", Value: "1"},
			{Key: "Connection", Value: "close"},
			{Key: "Transfer-Encoding", Value: "gzip"},
			{Key: "X-Real", Value: "yes"},
		}
		if f.Target == "/framed" {
			out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed, Header: hdr})
			out = api.AppendFrame(out, &api.Data{Payload: []byte("hello")})
			out = api.AppendFrame(out, &api.Trailers{Header: []api.KV{{Key: "Qkas-Error", Value: "overloaded"}, {Key: "X-Sum", Value: "1"}}})
			sc.Write(out)
		} else {
			sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 5, Header: hdr}), "hello"...))
		}
		sc.Close()
	})
	for _, path := range []string{"/plain", "/framed"} {
		t.Run(path, func(t *testing.T) {
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+path, nil)
			body := readAll(t, resp)
			if resp.StatusCode != 200 || body != "hello" {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			if v := resp.Header.Values(api.HeaderError); len(v) != 0 {
				t.Errorf("client got Qkas-Error %q on an agent's 200", v)
			}
			if v := resp.Trailer.Values(api.HeaderError); len(v) != 0 {
				t.Errorf("client got a Qkas-Error trailer %q from an agent", v)
			}
			if resp.Header.Get("X-Real") != "yes" || resp.Header.Get("Connection") != "" || len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "gzip" {
				t.Errorf("headers %v, transfer encoding %v", resp.Header, resp.TransferEncoding)
			}
			if path == "/framed" && resp.Trailer.Get("X-Sum") != "1" {
				t.Errorf("trailers %v, want X-Sum", resp.Trailer)
			}
		})
	}
}

// A service's response head over the limit is the service's failure: a typed 502
// service_unavailable from kasd, never a 200 and never blamed on the agent.
func TestServiceResponseHeadTooLarge(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/huge": // 4 MiB of headers
			v := strings.Repeat("v", 4<<10)
			for i := range 1024 {
				w.Header().Set(fmt.Sprintf("X-Big-%d", i), v)
			}
		case "/many": // few bytes, more fields than a head may carry
			for i := range api.MaxHeaderFields + 10 {
				w.Header().Set(fmt.Sprintf("X-F-%d", i), "v")
			}
		}
		io.WriteString(w, "body")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	for _, path := range []string{"/huge", "/many"} {
		t.Run(path, func(t *testing.T) {
			r := e.doError(e.client, "GET", "/api/v1/agents/alpha/proxy/web"+path, nil)
			if r.status != http.StatusBadGateway || r.code != "service_unavailable" {
				t.Fatalf("%+v; want 502 service_unavailable", r)
			}
		})
	}
}

// A client whose request body is malformed (a bad chunk size line) gets 400 bad_request: its
// own fault, not a 502 blamed on the agent; at the start of the body or after 100 KiB of it.
func TestMalformedClientBody(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v", n, err)
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	addr := strings.TrimPrefix(e.api.URL, "http://")
	tok := e.token()
	good := fmt.Sprintf("%x\r\n%s\r\n", 100<<10, strings.Repeat("y", 100<<10))
	for name, body := range map[string]string{
		"at once":  "zz\r\nhello\r\n0\r\n\r\n",
		"later":    good + "not-hex\r\nhello\r\n0\r\n\r\n",
		"overflow": "fffffffffffffffffffff\r\nx\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			req := "POST /api/v1/agents/alpha/proxy/web/up HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer " + tok +
				"\r\nTransfer-Encoding: chunked\r\n\r\n" + body
			if _, err := io.WriteString(conn, req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			he := api.ReadHTTPError(resp)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(api.HeaderError) != "bad_request" {
				t.Fatalf("%d %q %v; want 400 bad_request", resp.StatusCode, resp.Header.Get(api.HeaderError), he)
			}
		})
	}
	if n := counter(t, e.reg, "kasd_requests_total", map[string]string{"code": "502"}); n != 0 {
		t.Errorf("%v malformed client bodies counted as 502", n)
	}
}

// An agent's error frame with code client_canceled (agentd sends it when its call to the
// service ended with its context, e.g. when its drain timeout cancels the connection's) is a
// failure of the agent's, not kasd's client going away: the client gets a 502, not the 200 with
// an empty body net/http sent when kasd wrote nothing.
func TestAgentClientCanceledFrameIsAgentFailure(t *testing.T) {
	for _, code := range []api.Code{api.CodeClientCanceled} {
		t.Run(code.String(), func(t *testing.T) {
			e := newEnv(t)
			e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
				httpstream.Refuse(sc, &api.Error{Code: code, Message: "request canceled"})
			})
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "agent_failed" {
				t.Fatalf("agent's %s error frame: client got %d %q (Qkas-Error %q); want 502 agent_failed", code, resp.StatusCode, body, resp.Header.Get(api.HeaderError))
			}
		})
	}
}

// An agent speaks for itself only with the codes agentd answers with: an error frame with
// another code (unauthenticated, telling the client its JWT expired; a code no version knows)
// is the agent's failure, 502 agent_failed, not kasd's own answer, and adds no metric label of
// its own; a Retry-After it asks for is capped. Each was passed on (an independent security
// review: 3,001 label values from one agent, a 401 with a phishing message, Retry-After: 3600).
func TestAgentErrorFrameCannotSpeakForKasd(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		switch f.Target {
		case "/unauthenticated":
			httpstream.Refuse(sc, &api.Error{Code: api.CodeUnauthenticated, Message: "Your JWT expired, log in at http://evil.example"})
		case "/unknown":
			httpstream.Refuse(sc, &api.Error{Code: 3999, Message: "made up"})
		case "/overloaded":
			httpstream.Refuse(sc, &api.Error{Code: api.CodeOverloaded, Message: "busy", RetryAfter: time.Hour})
		}
	})
	for _, tc := range []struct {
		path, code string
		status     int
		retryAfter string
	}{
		{"/unauthenticated", "agent_failed", http.StatusBadGateway, ""},
		{"/unknown", "agent_failed", http.StatusBadGateway, ""},
		{"/overloaded", "overloaded", http.StatusServiceUnavailable, "30"},
	} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+tc.path, nil)
		body := readAll(t, resp)
		if resp.StatusCode != tc.status || resp.Header.Get(api.HeaderError) != tc.code || resp.Header.Get("Retry-After") != tc.retryAfter {
			t.Errorf("%s: %d %s=%q Retry-After %q %q; want %d %q Retry-After %q", tc.path, resp.StatusCode, api.HeaderError,
				resp.Header.Get(api.HeaderError), resp.Header.Get("Retry-After"), body, tc.status, tc.code, tc.retryAfter)
		}
	}
	for _, code := range []string{"code_3999", "unauthenticated"} {
		if n := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": code}); n != 0 {
			t.Errorf("kasd_api_errors_total{code=%q} = %v from an agent's error frame", code, n)
		}
	}
}

// A Content-Length in an agent's header list is not passed on: the length is the response
// frame's content_length. Here the list says 5 and the body (unknown length, ended by FIN) is
// 10 bytes: the client gets all 10, not a response net/http cuts at 5 and counts as canceled.
func TestAgentContentLengthHeaderIgnored(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		head := &api.Response{Status: 200, Header: []api.KV{{Key: "Content-Length", Value: "5"}}, ContentLength: -1}
		_, _ = sc.Write(append(api.AppendFrame(nil, head), "0123456789"...))
		_ = sc.CloseWrite()
	})
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "0123456789" {
		t.Fatalf("status %d, body %q, err %v; want 200 and the agent's 10 bytes", resp.StatusCode, body, err)
	}
}

// A client request with more header fields than a request head may carry is refused by kasd as
// too_large (413), not sent to the agent, which refuses the head (a 502 blamed on the agent).
func TestClientTooManyHeaderFields(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(svc.Close)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)
	var hdr []string
	for i := range api.MaxHeaderFields + 10 {
		hdr = append(hdr, fmt.Sprintf("X-H%d", i), "v")
	}
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil, hdr...)
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(api.HeaderError) != "too_large" {
		t.Fatalf("status %d (Qkas-Error %q): %s; want 413 too_large", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
	// A limit hit is counted as one (it was only an API error).
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "request_head_too_large"}); n != 1 {
		t.Errorf("kasd_limit_rejections_total{reason=request_head_too_large} = %v, want 1", n)
	}
}

// A client request head that no stream can carry (over api.MaxHeadSize encoded, under the API's
// header limits) is the client's fault and said at once: 413 too_large, counted as an API error,
// not tried on a holder (it waited for the route timeout, was counted as retries and as an
// agent's response_head_too_large). A head just under the limit reaches the service.
func TestClientHeadOverMaxHeadSize(t *testing.T) {
	e := newEnv(t)
	var got atomic.Int64
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(int64(len(r.Header.Get("X-Big"))))
	}))
	t.Cleanup(svc.Close)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil, "X-Big", strings.Repeat("a", api.MaxHeadSize))
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(api.HeaderError) != "too_large" {
		t.Fatalf("status %d (Qkas-Error %q): %s; want 413 too_large", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kasd_api_errors_total", map[string]string{"code": "too_large"}, 1},
		{"kasd_retries_total", nil, 0},
		{"kasd_limit_rejections_total", map[string]string{"reason": "response_head_too_large"}, 0},
		{"kasd_limit_rejections_total", map[string]string{"reason": "request_head_too_large"}, 1},
	} {
		if n := counter(t, e.reg, c.name, c.labels); n != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, n, c.want)
		}
	}
	size := api.MaxHeadSize - 1024
	resp = e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil, "X-Big", strings.Repeat("a", size))
	if body := readAll(t, resp); resp.StatusCode != 200 || got.Load() != int64(size) {
		t.Fatalf("a head under the limit: status %d, service saw %d bytes of X-Big: %s", resp.StatusCode, got.Load(), body)
	}
}

// A service whose response head is over the limits (more than 512 fields, or over 64 KiB)
// gets the client a 502 service_unavailable, and agentd counts it as what it is: a 502 in
// agentd_requests_total, a service error and a limit hit (it was counted as a 200 and in no
// limit metric), without the service's body after the error frame.
func TestServiceResponseHeadOverLimitsCounted(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fields" {
			for i := range api.MaxHeaderFields + 88 {
				w.Header().Set("X-F"+strconv.Itoa(i), "v")
			}
		} else {
			w.Header().Set("X-Big", strings.Repeat("b", api.MaxHeadSize))
		}
		_, _ = w.Write([]byte("the service's body"))
	}))
	t.Cleanup(svc.Close)
	reg := prometheus.NewRegistry()
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) { c.Registerer = reg }), 1)
	for _, path := range []string{"/fields", "/bytes"} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+path, nil)
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "service_unavailable" || strings.Contains(body, "the service's body") {
			t.Fatalf("%s: status %d (Qkas-Error %q): %s; want 502 service_unavailable", path, resp.StatusCode, resp.Header.Get(api.HeaderError), body)
		}
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"agentd_requests_total", map[string]string{"service": "web", "code": "200"}, 0},
		{"agentd_requests_total", map[string]string{"service": "web", "code": "502"}, 2},
		{"agentd_service_errors_total", map[string]string{"service": "web"}, 2},
		{"agentd_limit_rejections_total", map[string]string{"reason": "response_head_too_large"}, 2},
	} {
		// agentd counts a request when its handler returns, which can be just after kasd
		// relayed the 502 to the client.
		waitCounter(t, reg, c.name, c.labels, c.want)
		if n := counter(t, reg, c.name, c.labels); n != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, n, c.want)
		}
	}
}

// A service whose response head is over the limits and whose body is streamed (flushed,
// chunked) or larger than 16 KiB: the head leaves during the body copy, which returns the head
// error; the service handler's WriteError must not reset the stream (which could discard the
// error frame: the client got 502 agent_failed "the peer reset the stream") but leave the
// response ended with FIN after the frame.
func TestHeadOverLimitsStreamedBodyNotReset(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range api.MaxHeaderFields + 88 {
			w.Header().Set("X-F"+strconv.Itoa(i), "v")
		}
		if r.URL.Path == "/stream" {
			w.Write([]byte("data: 1\n\n"))
			w.(http.Flusher).Flush()
			return
		}
		w.Write([]byte(strings.Repeat("x", 64<<10)))
	}))
	t.Cleanup(svc.Close)
	reg := prometheus.NewRegistry()
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) { c.Registerer = reg }), 1)
	for _, path := range []string{"/large", "/stream"} {
		for i := 0; i < 20; i++ {
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+path, nil)
			body := readAll(t, resp)
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "service_unavailable" {
				t.Fatalf("%s #%d: status %d (Qkas-Error %q): %.200s; want 502 service_unavailable", path, i, resp.StatusCode, resp.Header.Get(api.HeaderError), body)
			}
		}
	}
}

// A service the agent cannot reach is answered 502 service_unavailable whatever the request's
// body. One larger than the replay buffer, or chunked, is accepted by agentd before the service
// runs, and the agent's error frame after accepted was taken for a protocol error: 502
// agent_failed "service_unavailable error frame after the request was accepted". It is the
// request's final answer (api/SPEC.md), sent to no other holder.
func TestServiceErrorAfterAcceptedIsTheAnswer(t *testing.T) {
	e := newEnv(t)
	down := httptest.NewServer(http.NotFoundHandler())
	svcURL := down.URL
	down.Close()
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svcURL}), 1)
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
	}{{"small", 1000, false}, {"large", 200 << 10, false}, {"chunked", 200 << 10, true}} {
		var body io.Reader = strings.NewReader(strings.Repeat("x", tc.size))
		if tc.chunked {
			body = io.MultiReader(body)
		}
		resp := e.do("POST", "/api/v1/agents/alpha/proxy/web/upload", body)
		got := readAll(t, resp)
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "service_unavailable" {
			t.Errorf("%s: %d %q %s; want 502 service_unavailable", tc.name, resp.StatusCode, resp.Header.Get(api.HeaderError), got)
		}
	}
}

// A not_holder error frame after accepted breaks the protocol (a refusal can no longer come;
// other codes are the request's answer, TestServiceErrorAfterAcceptedIsTheAnswer): kasd does
// not take it for a refusal, so a POST the agent may have processed is not sent to another
// holder; the client gets a 502 naming the agent. A second accepted frame is refused the same
// way.
func TestErrorAfterAcceptedIsNotRetried(t *testing.T) {
	for _, second := range []api.Message{&api.Error{Code: api.CodeNotHolder, Message: "not mine after all"}, &api.Accepted{}} {
		t.Run(second.Type().String(), func(t *testing.T) {
			e := newEnv(t)
			var got atomic.Int64
			handle := func(sc *quic.StreamConn, f *api.Request) {
				if got.Add(1) > 1 {
					_, _ = io.Copy(io.Discard, sc)
					_, _ = sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 2}), "ok"...))
					_ = sc.CloseWrite()
					return
				}
				if err := httpstream.Accept(sc, f); err != nil {
					sc.Abort(quic.StreamCodeInternal)
					return
				}
				_, _ = io.Copy(io.Discard, sc) // processed
				_, _ = sc.Write(api.AppendFrame(nil, second))
				_ = sc.CloseWrite()
			}
			e.startFakeReplica("alpha", "fake-a", []string{"web"}, handle)
			e.startFakeReplica("alpha", "fake-b", []string{"web"}, handle)
			pr, pw := io.Pipe()
			go func() { _, _ = pw.Write([]byte("launch")); _ = pw.Close() }() // chunked: gated
			req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/launch"), pr)
			req.Header.Set("Authorization", "Bearer "+e.token())
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if n := got.Load(); n != 1 {
				t.Errorf("the POST reached %d holders, want 1", n)
			}
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "agent alpha") {
				t.Errorf("status %d %q: %s; want a 502 naming the agent", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
			}
		})
	}
}

// An agent's 101 must switch to the protocol the client asked for, as agentd checks its
// service's (and httputil.ReverseProxy does): a switch to another (or none) is the agent's
// failure, 502, and the client's connection is not handed to the agent's bytes (an independent
// security review: a WebSocket upgrade answered with h2c took the client's next pipelined
// request, its JWT with it, into the agent's tunnel). The protocol asked for still switches.
func TestAgentUpgradeToAnotherProtocolRefused(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		proto := strings.TrimPrefix(f.Target, "/")
		var hdr []api.KV
		if proto != "none" {
			hdr = []api.KV{{Key: "Upgrade", Value: proto}}
		}
		_, _ = sc.Write(api.AppendFrame(nil, &api.Response{Status: 101, ContentLength: -1, Header: hdr}))
		_, _ = io.Copy(sc, sc) // echo until the client's side ends
		_ = sc.CloseWrite()
	})
	for _, tc := range []struct {
		answer string
		status int
	}{{"h2c", http.StatusBadGateway}, {"none", http.StatusBadGateway}, {"WebSocket", http.StatusSwitchingProtocols}} {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /api/v1/agents/alpha/proxy/web/%s HTTP/1.1\r\nHost: kasd\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", tc.answer, e.token())
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("answer %s: %v", tc.answer, err)
		}
		if resp.StatusCode != tc.status || tc.status == http.StatusBadGateway && resp.Header.Get(api.HeaderError) != "agent_failed" {
			t.Errorf("agent switching to %q: %d %s=%q, want %d", tc.answer, resp.StatusCode, api.HeaderError, resp.Header.Get(api.HeaderError), tc.status)
		}
	}
}
