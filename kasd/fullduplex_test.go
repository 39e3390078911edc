package kasd_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// An agent that answers a streaming upload with a streaming response (its head and a first
// line at once, then, once the request body has ended, how many body bytes it received and
// whether the body ended cleanly). This is what any full-duplex HTTP/1.1 service does (a
// progress stream for an upload, an echo or chat service); the protocol allows it (the head
// may come before the body ends, api/SPEC.md "Request streams").
//
// kasd writes the response head to its client while its body writer goroutine still reads the
// client's request body. Without full duplex, net/http's HTTP/1.1 server, writing a response
// head while the request body is unread, reads and discards up to 256 KiB of it and closes it,
// concurrently with kasd's body writer: the agent got a truncated body, or the stream was reset
// and the client's response aborted as a 502 agent_failed.
func TestFullDuplexUploadKeepsEveryBodyByte(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		if _, err := sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1}), "started\n"...)); err != nil {
			return
		}
		// The body is chunked: content length -1, framed (a chunked HTTP/1.1 body may end with
		// trailers).
		b, err := readRequestBody(sc, f)
		_, _ = fmt.Fprintf(sc, "received %d body bytes, err %v\n", len(b), err)
		_ = sc.CloseWrite()
	})
	const first, rest = 1 << 10, 200 << 10
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/upload"), pr)
	req.Header.Set("Authorization", "Bearer "+e.token())
	go func() {
		_, _ = pw.Write(bytes.Repeat([]byte("a"), first))
		time.Sleep(500 * time.Millisecond) // the agent's head and first line reach kasd
		for i := 0; i < rest; i += 4 << 10 {
			_, _ = pw.Write(bytes.Repeat([]byte("b"), 4<<10))
		}
		_ = pw.Close()
	}()
	client := &http.Client{Timeout: 20 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the response: %v (got %q)", err, b)
	}
	want := fmt.Sprintf("received %d body bytes, err <nil>", first+rest)
	if !strings.Contains(string(b), want) {
		t.Fatalf("the agent did not get the client's whole body:\n got: %q\nwant: %q", b, want)
	}
}
