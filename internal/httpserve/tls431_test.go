package httpserve

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A head that never completes (read header timeout, or the client going away) is not a 431 —
// net/http wrote none — and is not counted as one under TLS; nor is a whole head refused 400
// (no Host) after more than half the limit (a code review of the TLS count: both were).
func TestPartialHeadUnderTLSNotCountedAs431(t *testing.T) {
	addr, m := serveTLS(t, Limits{MaxHeaderBytes: 64 << 10, ReadHeaderTimeout: 300 * time.Millisecond},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 40 KiB of head (under the 64 KiB limit), never ended: a slow client.
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s", strings.Repeat("a", 40<<10))
	_, _ = io.Copy(io.Discard, c) // until the server closes at its ReadHeaderTimeout
	deadline := time.Now().Add(3 * time.Second)
	for hits(m, ReasonReadHeaderTimeout) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the StateClosed hook
	t.Logf("read_header_timeout=%v max_header_bytes=%v", hits(m, ReasonReadHeaderTimeout), hits(m, ReasonMaxHeaderBytes))
	if n := hits(m, ReasonMaxHeaderBytes); n != 0 {
		t.Errorf("max_header_bytes = %v for a head that timed out under the limit (no 431 was written)", n)
	}
}

func TestBadHeadUnderTLSNotCountedAs431(t *testing.T) {
	addr, m := serveTLS(t, Limits{MaxHeaderBytes: 64 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 40<<10)) // no Host: 400
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 400") {
		t.Fatalf("answer %.40q, want a 400", b)
	}
	time.Sleep(200 * time.Millisecond) // the StateClosed hook
	if n := hits(m, ReasonMaxHeaderBytes); n != 0 {
		t.Errorf("max_header_bytes = %v for a 400", n)
	}
}
