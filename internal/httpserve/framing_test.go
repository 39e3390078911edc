package httpserve

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A request with both Content-Length and Transfer-Encoding: chunked — a front proxy that frames
// it by its length forwards the "body" as one request, net/http reads a second request from
// it — is answered with Connection: close, and the connection is closed: the request hidden in
// its body is never served (RFC 9112 §6.1). The head is written a byte at a time, so that the
// field line is split across reads.
func TestAmbiguousFramingClosesConnection(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	addr, m := serve(t, Limits{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	for _, tc := range []struct {
		name, head string
		split      bool
	}{
		{"together", "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"split reads", "POST /first HTTP/1.1\r\nHost: x\r\ncOnTeNt-LeNgTh: 35\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"on an earlier request", "GET /before HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nPOST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			paths = nil
			mu.Unlock()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			msg := tc.head + "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
			if tc.split {
				for i := range len(tc.head) {
					if _, err := io.WriteString(c, tc.head[i:i+1]); err != nil {
						t.Fatal(err)
					}
					time.Sleep(200 * time.Microsecond)
				}
				msg = msg[len(tc.head):]
			}
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			var last *http.Response
			for {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				last = resp
				if resp.Close {
					break
				}
			}
			if last == nil || !last.Close {
				t.Fatalf("the chunked request's answer did not close the connection (last %v)", last)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after Connection: close: %v, want EOF", err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, p := range paths {
				if p == "/smuggled" {
					t.Fatalf("served %v: the request in the body was served", paths)
				}
			}
		})
	}
	if n := hits(m, ReasonAmbiguousFraming); n != 3 {
		t.Errorf("ambiguous_framing hits %v, want 3", n)
	}
}

// A connection that carries only chunked requests, or only requests of known length, is kept
// alive.
func TestUnambiguousFramingKeepsConnection(t *testing.T) {
	addr, m := serve(t, Limits{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	for _, reqs := range []string{
		strings.Repeat("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 3),
		strings.Repeat("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 3),
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, reqs); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for i := range 3 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				t.Fatalf("response %d closes the connection", i)
			}
		}
		c.Close()
	}
	if n := hits(m, ReasonAmbiguousFraming); n != 0 {
		t.Errorf("ambiguous_framing hits %v, want 0", n)
	}
}

// FuzzFramingScan: however the bytes are split into reads, the scan finds a Content-Length field
// line exactly when the whole does.
func FuzzFramingScan(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"), uint8(17), uint8(5))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint8(1), uint8(1))
	f.Add([]byte("\nCONTENT-LENGTH:"), uint8(1), uint8(3))
	f.Add([]byte("x\ncontent-length"), uint8(2), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, a, b uint8) {
		want := hasFieldLine(data)
		var s framingScan
		for i, step := 0, 0; i < len(data); step++ {
			n := int(a)
			if step%2 == 1 {
				n = int(b)
			}
			n = max(1, n%32)
			end := min(len(data), i+n)
			s.observe(data[i:end])
			i = end
		}
		if got := s.sawContentLength(); got != want {
			t.Fatalf("split scan %v, whole %v (%q)", got, want, data)
		}
		// Prefixed by a line break, the field at the start counts too.
		if !hasFieldLine(append([]byte("\n"), bytes.ToLower(data)...)) && bytes.HasPrefix(bytes.ToLower(data), []byte(clField)) {
			t.Fatal("a field at the start of a line was missed")
		}
	})
}

// Under TLS the connection's bytes are encrypted where the scan would see them: every HTTP/1.1
// request with a Transfer-Encoding is answered with Connection: close, so the request hidden in
// its body is never served (the scan found nothing there, and the connection stayed open).
func TestAmbiguousFramingUnderTLS(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	})
	s, err := New("api", h, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert := httptest.NewUnstartedServer(nil)
	cert.StartTLS() // only for its certificate
	s.TLSConfig = &tls.Config{Certificates: cert.TLS.Certificates}
	cert.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Serve(ln) })
	t.Cleanup(func() { _ = s.Close(); wg.Wait() })

	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if !resp.Close {
		t.Error("the chunked request's answer did not close the connection")
	}
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Error("a second response came: the request in the body was served")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(paths) != 1 || paths[0] != "/first" {
		t.Errorf("served %v, want only /first", paths)
	}
}

// serveTLS serves h under TLS with limits l (HTTP/2 offered), counted in the returned metrics.
func serveTLS(t *testing.T, l Limits, h http.Handler) (string, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New("api", h, l, m)
	if err != nil {
		t.Fatal(err)
	}
	cert := httptest.NewUnstartedServer(nil)
	cert.StartTLS() // only for its certificate
	s.TLSConfig = &tls.Config{Certificates: cert.TLS.Certificates, NextProtos: []string{"h2", "http/1.1"}}
	cert.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Serve(ln) })
	t.Cleanup(func() { _ = s.Close(); wg.Wait() })
	return ln.Addr().String(), m
}

// A request head over MaxHeaderBytes is counted under TLS too (the 431 net/http writes was
// matched in the bytes written, which under TLS are encrypted: found by the limits audit);
// requests within the limit, an upload larger than the limit and a client gone mid-upload are
// not counted.
func TestMaxHeaderBytesCountedUnderTLS(t *testing.T) {
	addr, m := serveTLS(t, Limits{MaxHeaderBytes: 64 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}} // HTTP/1.1
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	do := func(req *http.Request) int {
		t.Helper()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	req, _ := http.NewRequest("POST", "https://"+addr+"/", strings.NewReader(strings.Repeat("u", 256<<10)))
	if st := do(req); st != 200 {
		t.Fatalf("upload: %d", st)
	}
	req, _ = http.NewRequest("GET", "https://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 256<<10))
	if st := do(req); st != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", st)
	}
	// A client gone in the middle of an upload: its connection closes with a handler running.
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 1<<20, strings.Repeat("u", 200<<10))
	time.Sleep(100 * time.Millisecond)
	c.Close()
	tr.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for hits(m, ReasonMaxHeaderBytes) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the closes of the other connections
	if n := hits(m, ReasonMaxHeaderBytes); n != 1 {
		t.Errorf("max_header_bytes counted %v times, want 1 (the 431 only)", n)
	}
}
