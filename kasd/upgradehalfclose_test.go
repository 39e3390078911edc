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
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/qkas/qkas/agentd"
	agentk8s "github.com/qkas/qkas/agentd/kubernetes"
	"github.com/qkas/qkas/kasd"
)

// upgradeService switches to "test/1" and then, concurrently, reads the client's bytes to EOF
// and writes down bytes of pattern; with serverFirst it half-closes its side (FIN) as soon as
// it has written them, before the client is done, and reports what it read on got; otherwise it
// waits for the client's EOF and then writes "sum=<sha256> n=<count>\n" and closes.
func upgradeService(t *testing.T, down, expect int, serverFirst bool, got chan<- string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "test/1" {
			http.Error(w, "no upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n")
		brw.Flush()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			c.Write(pat(down))
			if serverFirst {
				c.(*net.TCPConn).CloseWrite()
			}
		}()
		h := sha256.New()
		var n int64
		if serverFirst {
			// The client does not half-close: read exactly what it sends.
			n, err = io.CopyN(h, brw.Reader, int64(expect))
		} else {
			n, err = io.Copy(h, brw.Reader)
		}
		res := fmt.Sprintf("sum=%s n=%d", hex.EncodeToString(h.Sum(nil)), n)
		if err != nil {
			res += " err=" + err.Error()
		}
		<-wrote
		if serverFirst {
			got <- res
			return
		}
		io.WriteString(c, res+"\n")
	}))
	t.Cleanup(s.Close)
	return s
}

func pat(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13+i/251) % 253
	}
	return b
}

func sumOf(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// upgradeThrough dials kasd's API at base, upgrades path, sends up bytes and, with
// clientHalfClose, half-closes (FIN), then reads everything kasd sends until EOF.
func upgradeThrough(t *testing.T, base, path, tok string, up []byte, clientHalfClose bool) ([]byte, error) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n", path, tok)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	go func() {
		c.Write(up)
		if clientHalfClose {
			c.(*net.TCPConn).CloseWrite()
		}
	}()
	return io.ReadAll(br)
}

// Upgraded streams through both routes, with large transfers each way checked byte for byte:
// the client half-closes first (FIN, and it goes on reading) and the service answers after the
// client's EOF. The client's FIN must not end the stream.
func TestUpgradeClientHalfClosesFirst(t *testing.T) {
	const size = 3 << 20
	f := newFleetEnv(t, 2)
	svc := upgradeService(t, size, 0, false, nil)
	a := f.startAgent("alpha", "pod-a", svc.URL, []*node{f.nodes[1]}, 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-1")
	up := pat(size + 12345)
	want := append(pat(size), []byte(fmt.Sprintf("sum=%s n=%d\n", sumOf(up), len(up)))...)
	for _, tc := range []struct {
		route string
		nd    *node
	}{{"local", f.nodes[1]}, {"forwarded", f.nodes[0]}} {
		out, err := upgradeThrough(t, tc.nd.api.URL, "/api/v1/agents/alpha/proxy/web/x", f.token(), up, true)
		if err != nil || !bytes.Equal(out, want) {
			t.Errorf("%s: got %d bytes (%v), want %d; tail %q", tc.route, len(out), err, len(want), tail(out))
		}
	}
}

func tail(b []byte) string {
	if len(b) > 80 {
		b = b[len(b)-80:]
	}
	return string(b)
}

func TestUpgradeHalfCloseDirectControl(t *testing.T) {
	const size = 3 << 20
	gotc := make(chan string, 1)
	clientFirst := upgradeService(t, size, 0, false, nil)
	serverFirst := upgradeService(t, size, size+12345, true, gotc)
	up := pat(size + 12345)
	out, err := upgradeThrough(t, clientFirst.URL, "/x", "t", up, true)
	want := append(pat(size), []byte(fmt.Sprintf("sum=%s n=%d\n", sumOf(up), len(up)))...)
	if err != nil || !bytes.Equal(out, want) {
		t.Errorf("client first: got %d bytes (%v), want %d", len(out), err, len(want))
	}
	out, err = upgradeThrough(t, serverFirst.URL, "/x", "t", up, false)
	if err != nil || !bytes.Equal(out, pat(size)) {
		t.Errorf("service first: got %d bytes (%v), want %d", len(out), err, size)
	}
	if res, want := <-gotc, fmt.Sprintf("sum=%s n=%d", sumOf(up), len(up)); res != want {
		t.Errorf("service read %s, want %s", res, want)
	}
}

// The service half-closes at once (a greeting, then FIN) and only then does the client send:
// the client's bytes must still reach the service, through both routes (an upgraded stream is
// two independent directions).
func TestUpgradeServiceHalfClosesFirst(t *testing.T) {
	const size = 1 << 20
	f := newFleetEnv(t, 2)
	gotc := make(chan string, 1)
	svc := upgradeService(t, 16, size, true, gotc)
	a := f.startAgent("alpha", "pod-a", svc.URL, []*node{f.nodes[1]}, 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-1")
	up := pat(size)
	for _, tc := range []struct {
		route, base, path string
	}{
		{"direct (control)", svc.URL, "/x"},
		{"local", f.nodes[1].api.URL, "/api/v1/agents/alpha/proxy/web/x"},
		{"forwarded", f.nodes[0].api.URL, "/api/v1/agents/alpha/proxy/web/x"},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(tc.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n", tc.path, f.token())
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("%s: %v %v", tc.route, resp, err)
		}
		greeting, err := io.ReadAll(br) // up to the service's FIN
		if err != nil || !bytes.Equal(greeting, pat(16)) {
			t.Errorf("%s: greeting %q, %v", tc.route, greeting, err)
		}
		time.Sleep(200 * time.Millisecond)
		_, werr := c.Write(up)
		select {
		case res := <-gotc:
			if want := fmt.Sprintf("sum=%s n=%d", sumOf(up), len(up)); res != want {
				t.Errorf("%s: the service read %s, want %s (client write error %v)", tc.route, res, want, werr)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s: the service never got the client's bytes", tc.route)
		}
		c.Close()
	}
}

// The same through the kubernetes service (exec, attach, port-forward go through
// httputil.ReverseProxy, which closes the API server's connection when the request's context
// ends): the API server half-closes first, and the client's bytes still reach it.
func TestKubernetesUpgradeServiceHalfClosesFirst(t *testing.T) {
	const size = 1 << 20
	e := newEnv(t)
	gotc := make(chan string, 1)
	apiServer := upgradeService(t, 16, size, true, gotc)
	svc, err := agentk8s.New(agentk8s.Config{REST: &rest.Config{Host: apiServer.URL, BearerToken: kubeSAToken}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "alpha-0", nil, func(c *agentd.Config) {
		c.Handlers = map[string]agentd.ServiceHandler{"kubernetes": svc}
	})
	waitConnected(t, a, 1)
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url(""), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/kubernetes/api/v1/namespaces/default/pods/p1/exec?command=cat HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: test/1\r\nContent-Length: 0\r\n\r\n", e.token())
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%v %v %s", resp, err, b)
	}
	greeting, err := io.ReadAll(br) // up to the API server's FIN
	if err != nil || !bytes.Equal(greeting, pat(16)) {
		t.Errorf("greeting %q, %v", greeting, err)
	}
	time.Sleep(200 * time.Millisecond)
	up := pat(size)
	_, werr := c.Write(up)
	select {
	case res := <-gotc:
		if want := fmt.Sprintf("sum=%s n=%d", sumOf(up), len(up)); res != want {
			t.Errorf("the API server read %s, want %s (client write error %v)", res, want, werr)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the API server never got the client's bytes")
	}
}

// Once the client has half-closed an upgraded connection, the service must keep it moving:
// silent for --upgrade-half-close-timeout, the tunnel is cut, and the service's connection and
// the request's slot are let go. A client gone without a word (its FIN) and a service that never
// closed its side held both for as long as the service lived (independent streaming review: 30
// such sockets took every slot of --max-inflight-per-agent, and every request to the agent got
// 503 overloaded). A service that keeps sending after the client's FIN is not cut.
func TestUpgradeHalfClosedSilentIsCut(t *testing.T) {
	const limit = time.Second
	serviceGone := make(chan error, 4)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test/1\r\n\r\n")
		brw.Flush()
		io.Copy(io.Discard, brw) // to the client's FIN
		if r.URL.Path == "/talk" {
			for i := range 25 { // 2.5 s of bytes, every 100 ms: longer than the limit in all
				fmt.Fprintf(c, "%d\n", i)
				time.Sleep(100 * time.Millisecond)
			}
			return
		}
		// Silent, its side never closed, until the agent lets the connection go: then a
		// write fails (an empty one would not reach the socket; a byte after the cut may
		// still be taken by the kernel, the next meets the reset).
		time.Sleep(3 * limit)
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := c.Write([]byte{0}); err != nil {
				serviceGone <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		serviceGone <- nil
	}))
	t.Cleanup(svc.Close)
	var logs logSink
	e := newEnv(t, func(c *kasd.Config) { c.UpgradeHalfCloseTimeout = limit; c.Log = logs.logger() })
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)

	start := time.Now()
	out, err := upgradeThrough(t, e.api.URL, "/api/v1/agents/alpha/proxy/web/silent", e.token(), []byte("hi"), true)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("silent: the tunnel lasted %v (%d bytes, %v)", d, len(out), err)
	}
	if err := <-serviceGone; err == nil {
		t.Fatal("the service's connection was never closed")
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "upgrade_half_close"}, 1)
	// The access line says why the session ended (it said 101 and nothing else).
	cuts := func() (n int) {
		for _, lines := range logs.access(t) {
			for _, l := range lines {
				if l["cut"] == "upgrade_half_close" && strings.HasSuffix(l["path"].(string), "/silent") {
					n++
				}
			}
		}
		return n
	}
	for deadline := time.Now().Add(5 * time.Second); cuts() == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond) // the line follows the count
	}
	if n := cuts(); n != 1 {
		t.Errorf("%d access lines say upgrade_half_close, want 1", n)
	}

	out, err = upgradeThrough(t, e.api.URL, "/api/v1/agents/alpha/proxy/web/talk", e.token(), []byte("hi"), true)
	var want strings.Builder
	for i := range 25 {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if err != nil || string(out) != want.String() {
		t.Errorf("talking: %q (%v), want %q", out, err, want.String())
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "upgrade_half_close"}); n != 1 {
		t.Errorf("upgrade_half_close counted %v times, want 1", n)
	}
}
