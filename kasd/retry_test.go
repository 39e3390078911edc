package kasd_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// checksumService answers every request with its method, path, body length and SHA-256, echoes
// the body, and remembers how often it saw each path.
type checksumService struct {
	*httptest.Server
	mu   sync.Mutex // guards seen
	seen map[string]int
}

func newChecksumService(t *testing.T) *checksumService {
	s := &checksumService{seen: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.seen[r.URL.Path]++
		s.mu.Unlock()
		if n := r.URL.Query().Get("size"); n != "" && r.Method == "GET" {
			var size int
			fmt.Sscan(n, &size)
			b = randomBody(uint64(size), size)
		}
		w.Header().Set("X-Body", fmt.Sprintf("%s %s %d %s", r.Method, r.URL.Path, len(b), checksum(b)))
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *checksumService) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[path]
}

func checksum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// randomBody returns n pseudo-random bytes for seed (cheap: ChaCha8 fills the slice).
func randomBody(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// call is one request of a load test and what must come back.
type call struct {
	method string
	path   string
	body   []byte // nil for a GET; the service echoes a POST's body
	size   int
}

// randomCalls makes n GETs and POSTs with bodies of random sizes up to maxBody.
func randomCalls(n int, seed uint64, maxBody int) []call {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]call, n)
	for i := range out {
		size := r.IntN(maxBody + 1)
		c := call{method: "GET", path: fmt.Sprintf("/c/%d", i), size: size}
		if i%2 == 1 {
			c.method = "POST"
			c.body = randomBody(uint64(i), size)
		}
		out[i] = c
	}
	return out
}

// check sends c to baseURL (the API of a kasd) and checks the echoed body and its checksum.
func (c call) check(client *http.Client, baseURL, agent, token string, chunked bool) error {
	url := baseURL + "/api/v1/agents/" + agent + "/proxy/web" + c.path
	var body io.Reader
	if c.method == "GET" {
		url += fmt.Sprintf("?size=%d", c.size)
	} else {
		body = bytes.NewReader(c.body)
		if chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
	}
	req, _ := http.NewRequest(c.method, url, body)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", c.method, c.path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d %v %.200q", c.method, c.path, resp.StatusCode, err, got)
	}
	want := c.body
	if c.method == "GET" {
		want = randomBody(uint64(c.size), c.size)
	}
	if wantHdr := fmt.Sprintf("%s %s %d %s", c.method, c.path, len(want), checksum(want)); resp.Header.Get("X-Body") != wantHdr {
		return fmt.Errorf("%s %s: the service saw %q, want %q", c.method, c.path, resp.Header.Get("X-Body"), wantHdr)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s %s: response body of %d bytes differs from the %d expected", c.method, c.path, len(got), len(want))
	}
	return nil
}

func runCalls(t *testing.T, calls []call, send func(i int, c call) error) {
	t.Helper()
	errs := parallel(len(calls), func(i int) error { return send(i, calls[i]) })
	failed := 0
	for _, err := range errs {
		if err != nil {
			if failed++; failed <= 10 {
				t.Error(err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed", failed, len(calls))
	}
}

// A holder that refuses before processing (a stale registry entry: a peer kasd that does not
// hold the agent) costs nothing but a retry: GETs and POSTs with bodies of every size, sent at
// once, all succeed on the next holder, each body intact, each request seen once.
func TestRetryStaleHolderUnderLoad(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := newChecksumService(t)
	f.startAgent("alpha", "pod", svc.URL, f.nodes[2:3], 1)
	f.nodes[1].reg.SetAgentConnections("alpha", 1) // kas-1 claims alpha without holding it
	f.waitHolders("alpha", "kas-1", "kas-2")
	client := loadClient(t)
	tok := f.token()
	calls := randomCalls(60, 1, 200<<10)
	runCalls(t, calls, func(i int, c call) error {
		return c.check(client, f.nodes[0].api.URL, "alpha", tok, i%4 == 3)
	})
	for _, c := range calls {
		if n := svc.count(c.path); n != 1 {
			t.Errorf("%s %s reached the service %d times", c.method, c.path, n)
		}
	}
	refused := counter(t, f.nodes[1].promReg, "kasd_forwarded_in_total", map[string]string{"result": "not_holder"})
	retried := counter(t, f.nodes[0].promReg, "kasd_retries_total", map[string]string{"route": "forwarded", "reason": "not_holder"})
	if refused < 1 || retried != refused {
		t.Errorf("the stale holder refused %v requests and kas-0 retried %v; want the same, at least 1", refused, retried)
	}
}

// The same on one kasd: one connection of the agent refuses every request (with a not_holder
// or shutting_down Error frame, or a reset with the refused code) before reading its body,
// while a real agent connection takes them: every request succeeds, bodies intact.
func TestRetryRefusingConnection(t *testing.T) {
	for _, how := range []string{"not_holder", "shutting_down", "agent_not_connected", "reset"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			svc := newChecksumService(t)
			a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) { c.MaxIdleConnsPerService = 128 })
			waitConnected(t, a, 1)
			fa := e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
				switch how {
				case "reset":
					sc.Abort(quic.StreamCodeRefused)
				default:
					code, _ := api.ParseCode(how)
					httpstream.Refuse(sc, api.Errorf(code, "try elsewhere"))
				}
			})
			client := loadClient(t)
			tok := e.token()
			calls := randomCalls(40, 2, 200<<10)
			runCalls(t, calls, func(i int, c call) error { return c.check(client, e.api.URL, "alpha", tok, i%4 == 3) })
			if fa.streams.Load() == 0 {
				t.Fatal("no request met the refusing connection")
			}
			for _, c := range calls {
				if n := svc.count(c.path); n != 1 {
					t.Errorf("%s %s reached the service %d times", c.method, c.path, n)
				}
			}
			reason := how
			if how == "reset" {
				reason = "shutting_down" // a refused reset is a refusal: not processed
			}
			if got := counter(t, e.reg, "kasd_retries_total", map[string]string{"route": "local", "reason": reason}); got != float64(fa.streams.Load()) {
				t.Errorf("retries{local,%s} = %v, want one per refusal (%d)", reason, got, fa.streams.Load())
			}
		})
	}
}

// A GET whose stream fails before the first response byte (a reset with a code that is not
// "refused") is retried once, on another connection, and succeeds.
func TestRetryIdempotentAfterReset(t *testing.T) {
	e := newEnv(t)
	svc := newChecksumService(t)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) { c.MaxIdleConnsPerService = 128 })
	waitConnected(t, a, 1)
	fa := e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		sc.Abort(quic.StreamCodeInternal)
	})
	client := loadClient(t)
	tok := e.token()
	calls := make([]call, 40)
	for i := range calls {
		calls[i] = call{method: "GET", path: fmt.Sprintf("/g/%d", i), size: i * 1000}
	}
	runCalls(t, calls, func(i int, c call) error { return c.check(client, e.api.URL, "alpha", tok, false) })
	if fa.streams.Load() == 0 {
		t.Fatal("no GET met the failing connection")
	}
	if got := counter(t, e.reg, "kasd_retries_total", map[string]string{"route": "local", "reason": "agent_failed"}); got != float64(fa.streams.Load()) {
		t.Errorf("retries{local,agent_failed} = %v, want one per failed GET (%d)", got, fa.streams.Load())
	}
}

// A POST whose body was sent (all of it, or part of it after Accepted) when its stream failed
// may have been executed: it is never retried. The client gets a 502 (or, when kasd answers
// while the client is still sending, a broken request); the request reached exactly one
// holder.
func TestNoRetryAfterBodySent(t *testing.T) {
	e := newEnv(t)
	svc := newChecksumService(t)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) { c.MaxIdleConnsPerService = 128 })
	waitConnected(t, a, 1)
	fa := e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		if err := httpstream.Accept(sc, f); err != nil {
			return
		}
		if strings.HasPrefix(f.Target, "/partial/") {
			io.CopyN(io.Discard, sc, 10<<10)
		} else {
			io.Copy(io.Discard, sc) // the whole body, up to the FIN
		}
		sc.Abort(quic.StreamCodeInternal)
	})
	client := loadClient(t)
	tok := e.token()
	sizes := []int{1, 1000, 16 << 10, 40 << 10, 64 << 10, 200 << 10, 1 << 20}
	type outcome struct {
		path   string
		status int
		code   string
		err    error
	}
	const n = 84
	results := parallel(n, func(i int) outcome {
		size := sizes[i%len(sizes)]
		path := fmt.Sprintf("/full/%d", i)
		if i%2 == 1 && size > 64<<10 {
			path = fmt.Sprintf("/partial/%d", i)
		}
		var body io.Reader = bytes.NewReader(randomBody(uint64(i), size))
		if i%3 == 0 {
			body = io.MultiReader(body) // chunked
		}
		req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web"+path), body)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			return outcome{path: path, err: err}
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return outcome{path: path, status: resp.StatusCode, code: resp.Header.Get(api.HeaderError)}
	})
	fake := map[string]int{}
	for _, p := range fa.seen() {
		fake[p]++
	}
	if len(fake) == 0 {
		t.Fatal("no POST met the failing connection")
	}
	for _, r := range results {
		atFake, atService := fake[r.path], svc.count(r.path)
		switch {
		case atFake+atService != 1:
			t.Errorf("%s reached the failing connection %d times and the service %d times; want exactly one attempt", r.path, atFake, atService)
		case atService == 1 && r.status != 200:
			t.Errorf("%s: served, but the client got %d %v", r.path, r.status, r.err)
		case atFake == 1 && r.err == nil && (r.status != http.StatusBadGateway || r.code != "agent_failed"):
			t.Errorf("%s: failed at the agent, the client got %d %q; want 502 agent_failed", r.path, r.status, r.code)
		case atFake == 1 && r.err != nil && !strings.HasPrefix(r.path, "/partial/"):
			t.Errorf("%s: the whole body was sent, yet the client got no answer: %v", r.path, r.err)
		}
	}
	if got := counter(t, e.reg, "kasd_retries_total", nil); got != 0 {
		t.Errorf("kasd_retries_total = %v, want 0", got)
	}
}

// A client that goes away in the middle of a streamed response (SSE, or a chunked stream) is
// counted as a client cancel, 499, by kasd and by the agent; nothing is counted as a 502.
func TestClientCancelIsCounted(t *testing.T) {
	const n = 20
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		streamEvents(w, r, 20*time.Millisecond)
	}))
	t.Cleanup(svc.Close)
	agentReg := prometheus.NewRegistry()
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) { c.Registerer = agentReg })
	waitConnected(t, a, 1)
	client := loadClient(t)
	tok := e.token()
	for i, err := range parallel(2*n, func(i int) error {
		path := "/events"
		if i%2 == 1 {
			path = "/chunked"
		}
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web"+path), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		resp.Body.Close() // mid-stream: the connection is closed
		if err != nil || line != "data: 0\n" {
			return fmt.Errorf("first event %q, %v", line, err)
		}
		return nil
	}) {
		if err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	waitFor(t, "kasd and the agent to count every cancel", func() bool {
		return counter(t, e.reg, "kasd_requests_total", map[string]string{"route": "local", "code": "499"}) == 2*n &&
			counter(t, agentReg, "agentd_requests_total", map[string]string{"service": "web", "code": "499"}) == 2*n
	})
	if got := counter(t, e.reg, "kasd_requests_total", nil); got != 2*n {
		t.Errorf("kasd_requests_total = %v, want %d (all 499)", got, 2*n)
	}
	if got := counter(t, agentReg, "agentd_requests_total", nil); got != 2*n {
		t.Errorf("agentd_requests_total = %v, want %d (all 499)", got, 2*n)
	}
	for _, code := range []string{"agent_failed", "service_unavailable"} {
		if got := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": code}); got != 0 {
			t.Errorf("kasd_api_errors_total{code=%s} = %v, want 0", code, got)
		}
	}
	if got := counter(t, agentReg, "agentd_service_errors_total", nil); got != 0 {
		t.Errorf("agentd_service_errors_total = %v, want 0: a client cancel is not the service's failure", got)
	}
}

// 300 requests at once, GETs and POSTs with bodies of random sizes up to 200 KiB, half through
// the kasd that holds the agent (local) and half through another (forwarded): all succeed,
// every body checked both ways.
func TestLoadLocalAndForwarded(t *testing.T) {
	f := newFleetEnv(t, 2)
	svc := newChecksumService(t)
	a := f.startLoadAgent("alpha", svc.URL, f.nodes[1])
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-1")
	f.warmLinks(f.nodes[0], "alpha", 2) // kas-0's link to kas-1 up before the load
	local0 := counter(t, f.nodes[1].promReg, "kasd_requests_total", map[string]string{"route": "local", "code": "200"})
	fwd0 := counter(t, f.nodes[0].promReg, "kasd_requests_total", map[string]string{"route": "forwarded", "code": "200"})
	client := loadClient(t)
	tok := f.token()
	calls := randomCalls(300, 3, 200<<10)
	runCalls(t, calls, func(i int, c call) error {
		return c.check(client, f.nodes[i%2].api.URL, "alpha", tok, i%5 == 4)
	})
	local := counter(t, f.nodes[1].promReg, "kasd_requests_total", map[string]string{"route": "local", "code": "200"}) - local0
	fwd := counter(t, f.nodes[0].promReg, "kasd_requests_total", map[string]string{"route": "forwarded", "code": "200"}) - fwd0
	if local != 150 || fwd != 150 {
		t.Errorf("local 200s %v, forwarded 200s %v; want 150 each", local, fwd)
	}
	for _, c := range calls {
		if n := svc.count(c.path); n != 1 {
			t.Errorf("%s %s reached the service %d times", c.method, c.path, n)
		}
	}
}

// startLoadAgent is startAgent with the default QUIC timeouts and a connection pool sized for
// hundreds of concurrent requests: fleetEnv's agents detect a dead kasd within a second, which
// a loaded test machine (-race, few CPUs) can mistake for an idle connection.
func (f *fleetEnv) startLoadAgent(id, svcURL string, nd *node) *agentd.Agent {
	t := f.t
	tlsConf, err := quic.ClientTLSConfig(f.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	a, err := agentd.New(agentd.Config{
		KasAddresses: []string{nd.agentLn.Addr().String()}, Token: f.tokens[id], TLS: tlsConf, Replica: "pod",
		Services:               map[string]*url.URL{"web": mustURL(t, svcURL)},
		MaxIdleConnsPerService: 256,
		Backoff:                quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout:           5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}
