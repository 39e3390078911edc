package kasd_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

const testStall = 300 * time.Millisecond

func withStall(d time.Duration) envOption { return func(c *kasd.Config) { c.ClientStallTimeout = d } }

// dialAPI opens a raw TCP connection to e's API, its receive buffer as small as the kernel
// allows (a client that stops reading fills it at once).
func (e *env) dialAPI(t *testing.T) net.Conn {
	t.Helper()
	return dialSmallBuf(t, e.api.URL)
}

// dialSmallBuf opens a raw TCP connection to the server at url, its receive buffer as small as
// the kernel allows.
func dialSmallBuf(t *testing.T, url string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoSum answers "n=<bytes> sum=<sha256>" of the request body (400 if it broke).
func echoSum(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	fmt.Fprintf(w, "n=%d sum=%s", n, hex.EncodeToString(h.Sum(nil)))
}

// A client that announces an upload, sends its first bytes and then nothing, while staying
// connected, gets 408 client_timeout once one read of its body has waited the limit; the
// agent's stream is reset (its read of the body fails: never a body that looks complete), and
// the stall is counted. Before --client-stall-timeout the request (its agent stream, and the
// service's connection behind it) lasted as long as the client stayed connected.
func TestClientStallUpload(t *testing.T) {
	e := newEnv(t, withStall(testStall))
	bodyErr := make(chan error, 1)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		_, err := io.Copy(io.Discard, sc) // reads the upload, as a service that answers at its end
		bodyErr <- err
		if err == nil {
			_, _ = sc.Write(api.AppendFrame(nil, &api.Response{Status: 200}))
			_ = sc.Close()
		}
	})
	c := e.dialAPI(t)
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/upload HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nContent-Length: 100000\r\n\r\nthe first bytes", e.token())
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled upload: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(api.HeaderError) != "client_timeout" || !resp.Close {
		t.Errorf("got %d %q close=%v (%s); want 408 client_timeout with Connection: close", resp.StatusCode, resp.Header.Get(api.HeaderError), resp.Close, b)
	}
	if d := time.Since(start); d < testStall {
		t.Errorf("answered after %v, before the limit (%v)", d, testStall)
	}
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Error("the agent read the cut upload as a complete body")
		}
	case <-time.After(5 * time.Second):
		t.Error("the agent's stream was not ended")
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "client_stall"}, 1)
	waitCounter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "client_timeout"}, 1)
}

// A client that asks for a large response and then reads nothing of it, while staying
// connected: once kasd's write to it has waited the limit, the request ends (the agent's stream
// is reset: its writes fail) and is counted as client_timeout.
func TestClientStallDownload(t *testing.T) {
	e := newEnv(t, withStall(testStall))
	agentDone := make(chan error, 1)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		if _, err := sc.Write(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1})); err != nil {
			agentDone <- err
			return
		}
		chunk := make([]byte, 64<<10)
		for i := 0; i < 4096; i++ { // 256 MiB: far more than the sockets and windows hold
			if _, err := sc.Write(chunk); err != nil {
				agentDone <- err
				return
			}
		}
		agentDone <- nil
	})
	c := e.dialAPI(t)
	fmt.Fprintf(c, "GET /api/v1/agents/alpha/proxy/web/big HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\n\r\n", e.token())
	select { // the client reads nothing
	case err := <-agentDone:
		if err == nil {
			t.Fatal("the agent wrote its whole response to a client that read none of it")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request outlived a client that stopped reading by 10s (limit 300ms)")
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "client_stall"}, 1)
	waitCounter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "client_timeout"}, 1)
	waitCounter(t, e.reg, "kasd_requests_total", map[string]string{"code": "408"}, 1)
}

// Only the client's own stalls count: an upload that keeps moving in small pieces with pauses
// shorter than the limit, a service that takes longer than the limit to answer and between
// the pieces of its answer, and an upgraded connection silent for longer than the limit all
// complete, byte for byte.
func TestClientStallSparesSlowButMoving(t *testing.T) {
	e := newEnv(t, withStall(testStall))
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			echoSum(w, r)
		case "/slow":
			time.Sleep(2 * testStall) // before the head
			w.WriteHeader(200)
			for i := range 3 {
				fmt.Fprintf(w, "piece %d\n", i)
				http.NewResponseController(w).Flush()
				time.Sleep(2 * testStall) // between pieces
			}
		case "/upgrade":
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n")
			brw.Flush()
			time.Sleep(3 * testStall) // an idle session: nothing either way
			conn.Write([]byte("late hello"))
		}
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)

	var sent bytes.Buffer
	pr, pw := io.Pipe()
	go func() {
		for i := range 8 {
			piece := bytes.Repeat([]byte{byte('a' + i)}, 1000)
			sent.Write(piece)
			if _, err := pw.Write(piece); err != nil {
				return
			}
			time.Sleep(testStall / 3)
		}
		pw.Close()
	}()
	resp := e.do("POST", "/api/v1/agents/alpha/proxy/web/upload", pr)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(sent.Bytes())
	if want := fmt.Sprintf("n=%d sum=%s", sent.Len(), hex.EncodeToString(sum[:])); resp.StatusCode != 200 || string(b) != want {
		t.Errorf("slow upload: %d %q; want 200 %q", resp.StatusCode, b, want)
	}

	resp = e.do("GET", "/api/v1/agents/alpha/proxy/web/slow", nil)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || err != nil || string(b) != "piece 0\npiece 1\npiece 2\n" {
		t.Errorf("slow service: %d %q %v", resp.StatusCode, b, err)
	}

	out, err := upgradeThrough(t, e.api.URL, "/api/v1/agents/alpha/proxy/web/upgrade", e.token(), nil, false)
	if err != nil || string(out) != "late hello" {
		t.Errorf("idle upgraded connection: %q %v; want %q", out, err, "late hello")
	}
	if n := metricValue(t, e.reg, "kasd_limit_rejections_total", "reason", "client_stall"); n != 0 {
		t.Errorf("client_stall counted %v times; want 0", n)
	}
}

// A client of an upgraded connection that stops reading while the service sends: the write to
// it that waited the limit ends the session (both directions: the service's connection closes).
func TestClientStallUpgradedWrite(t *testing.T) {
	e := newEnv(t, withStall(testStall))
	var wrote atomic.Int64
	ended := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer close(ended)
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n")
		brw.Flush()
		chunk := make([]byte, 64<<10)
		for i := 0; i < 4096; i++ {
			n, err := conn.Write(chunk)
			wrote.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	c := e.dialAPI(t)
	fmt.Fprintf(c, "GET /api/v1/agents/alpha/proxy/web/x HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n", e.token())
	select { // the client reads nothing
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("the upgraded session outlived a client that stopped reading by 10s (limit 300ms; %d bytes written)", wrote.Load())
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "client_stall"}, 1)
	waitCounter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "client_timeout"}, 1)
}

// The same two stalls over HTTP/2, where the limit acts on the stream, not the connection: a
// stalled upload gets 408 client_timeout, a download nobody reads ends the agent's stream, and
// another request on the same connection is served all the while.
func TestClientStallHTTP2(t *testing.T) {
	e := newEnv(t, withStall(testStall))
	agentDone := make(chan error, 1)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		switch f.Target {
		case "/upload":
			if _, err := io.Copy(io.Discard, sc); err == nil {
				_, _ = sc.Write(api.AppendFrame(nil, &api.Response{Status: 200}))
				_ = sc.Close()
			}
		case "/big":
			_, err := sc.Write(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1}))
			chunk := make([]byte, 64<<10)
			for i := 0; err == nil && i < 4096; i++ {
				_, err = sc.Write(chunk)
			}
			agentDone <- err
		default:
			_, _ = sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 2}), "ok"...))
			_ = sc.Close()
		}
	})
	srv := httptest.NewUnstartedServer(e.server().Handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	client := srv.Client()
	client.Timeout = 20 * time.Second
	get := func(method, path string, body io.Reader) (*http.Response, error) {
		req, _ := http.NewRequest(method, srv.URL+path, body)
		req.Header.Set("Authorization", "Bearer "+e.token())
		return client.Do(req)
	}

	big, err := get("GET", "/api/v1/agents/alpha/proxy/web/big", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Body.Close() // read nothing of it
	if big.ProtoMajor != 2 {
		t.Fatalf("%s, want HTTP/2", big.Proto)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("the first bytes")) }() // then nothing
	resp, err := get("POST", "/api/v1/agents/alpha/proxy/web/upload", pr)
	if err != nil {
		t.Fatalf("no answer to a stalled upload: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(api.HeaderError) != "client_timeout" {
		t.Errorf("stalled upload: %d %q (%s); want 408 client_timeout", resp.StatusCode, resp.Header.Get(api.HeaderError), b)
	}
	select {
	case err := <-agentDone:
		if err == nil {
			t.Fatal("the agent wrote its whole response to a client that read none of it")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the download outlived a client that stopped reading it by 10s")
	}
	if resp, err := get("GET", "/api/v1/agents/alpha/proxy/web/small", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a request on the same connection: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "client_stall"}, 2)
}

// Under load, the limit takes exactly the clients that stalled: 200 concurrent uploads and
// downloads (every body checked) share kasd with two clients that stop sending their uploads
// and two that never read their downloads. Every one of the 200 succeeds, the two stalled
// uploads get 408, and exactly four stalls are counted.
func TestClientStallUnderLoad(t *testing.T) {
	const limit = time.Second // roomy: a loaded machine (-race, 2 cores) must not cut a moving client
	e := newEnv(t, withStall(limit))
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			echoSum(w, r)
		case "/blob":
			var n int
			fmt.Sscan(r.URL.Query().Get("n"), &n)
			w.Write(pat(n))
		}
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)

	uploads := make(chan int, 2)
	for range 2 {
		c := e.dialAPI(t)
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/echo HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nContent-Length: 1000000\r\n\r\nsome bytes, then nothing", e.token())
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				uploads <- 0
				return
			}
			uploads <- resp.StatusCode
		}()
	}
	for range 2 {
		c := e.dialAPI(t)
		fmt.Fprintf(c, "GET /api/v1/agents/alpha/proxy/web/blob?n=%d HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\n\r\n", 64<<20, e.token())
	}

	client := loadClient(t)
	do := func(method, path string, body []byte) (string, error) {
		req, _ := http.NewRequest(method, e.url(path), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("%d %s", resp.StatusCode, b)
		}
		return string(b), err
	}
	errs := parallel(200, func(i int) error {
		n := (16 << 10) + i*1000
		if i%2 == 0 {
			body := pat(n)
			got, err := do("POST", "/api/v1/agents/alpha/proxy/web/echo", body)
			if want := fmt.Sprintf("n=%d sum=%s", n, sumOf(body)); err != nil || got != want {
				return fmt.Errorf("upload %d: %q %v", i, got, err)
			}
			return nil
		}
		got, err := do("GET", fmt.Sprintf("/api/v1/agents/alpha/proxy/web/blob?n=%d", 2*n), nil)
		if err != nil || got != string(pat(2*n)) {
			return fmt.Errorf("download %d: %d bytes, %v", i, len(got), err)
		}
		return nil
	})
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for range 2 {
		if code := <-uploads; code != http.StatusRequestTimeout {
			t.Errorf("a stalled upload: status %d, want 408", code)
		}
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "client_stall"}, 4)
	time.Sleep(2 * limit)
	if n := metricValue(t, e.reg, "kasd_limit_rejections_total", "reason", "client_stall"); n != 4 {
		t.Errorf("client_stall counted %v times, want 4 (the stalled clients only)", n)
	}
}
