package kasd_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// A client that sends part of a chunked request body and then stalls (stays connected, sends
// nothing) must not keep kasd from closing. kasd's body writer for the request (an owned
// goroutine: Close waits for it) waits in the client's body read, which has no deadline. When
// the attempt failed (here: Close closed the agent connections), RoundTrip used to wait for
// that writer, because the body was still replayable, so the handler hung too, and Close
// (which Shutdown calls at the end of the grace, and SIGTERM's drain) waited for the writer
// forever. Now the handler answers, its body's read is interrupted as it returns, and Close
// returns. The client gets the failure (a 502), never a response that looks like success.
func TestStalledUploadDoesNotBlockClose(t *testing.T) {
	e := newEnv(t)
	got := make(chan struct{}, 1)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		got <- struct{}{}
		<-sc.Context().Done() // never answers
	})
	pr, pw := io.Pipe()
	defer pw.CloseWithError(errors.New("test over")) // lets everything go in the end
	req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/upload"), pr)
	req.Header.Set("Authorization", "Bearer "+e.token())
	go func() { _, _ = pw.Write([]byte("the first bytes of an upload that then stalls")) }()
	status := make(chan int, 1)
	go func() {
		resp, err := e.client.Do(req)
		if err != nil {
			status <- 0
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the agent")
	}
	closed := make(chan struct{})
	go func() { _ = e.server().Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Errorf("Server.Close did not return within 5s: blocked behind a client that stalled its request body")
	}
	pw.CloseWithError(errors.New("test over"))
	<-closed
	if code := <-status; code == http.StatusOK {
		t.Errorf("the client got a 200 for a request whose agent connection was closed")
	}
}

// A request refused by a holder while its client has gone quiet mid-upload goes to the next
// holder at once: the retry does not wait for the client's next bytes (RoundTrip used to wait
// for its body writer, itself waiting for the client), and the next holder gets the whole body.
func TestRetryDoesNotWaitForStalledUpload(t *testing.T) {
	e := newEnv(t)
	const first = 1 << 10
	var attempts atomic.Int64
	retried := make(chan struct{})
	handle := func(sc *quic.StreamConn, f *api.Request) {
		if attempts.Add(1) == 1 {
			// The first holder refuses once the start of the body is here: kasd's body
			// writer is waiting for the client by then.
			if _, err := io.ReadFull(sc, make([]byte, first)); err != nil {
				sc.Abort(quic.StreamCodeInternal)
				return
			}
			httpstream.Refuse(sc, &api.Error{Code: api.CodeShuttingDown, Message: "draining"})
			return
		}
		close(retried)
		if err := httpstream.Accept(sc, f); err != nil { // the body is gated: chunked, over 64 KiB
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		b, err := readRequestBody(sc, f)
		if err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		msg := fmt.Sprintf("%d %x", len(b), sha256.Sum256(b))
		_, _ = sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: int64(len(msg))}), msg...))
		_ = sc.CloseWrite()
	}
	e.startFakeReplica("alpha", "fake-a", []string{"web"}, handle)
	e.startFakeReplica("alpha", "fake-b", []string{"web"}, handle)

	body := make([]byte, 200<<10)
	for i := range body {
		body[i] = byte(i % 251)
	}
	pr, pw := io.Pipe()
	defer pw.CloseWithError(errors.New("test over"))
	req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/upload"), pr)
	req.Header.Set("Authorization", "Bearer "+e.token())
	go func() { _, _ = pw.Write(body[:first]) }() // then the client goes quiet
	type result struct {
		b   []byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := e.client.Do(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		res <- result{b, err}
	}()
	select {
	case <-retried:
	case <-time.After(5 * time.Second):
		t.Fatal("the retry waited for the silent client's next bytes")
	}
	go func() { _, _ = pw.Write(body[first:]); _ = pw.Close() }() // the client goes on
	r := <-res
	if want := fmt.Sprintf("%d %x", len(body), sha256.Sum256(body)); r.err != nil || string(r.b) != want {
		t.Fatalf("the next holder got %q (%v), want %q", r.b, r.err, want)
	}
}

// The same when the request's handler cannot end either: the client reads nothing of a large
// response (kasd's write to it blocks) and sends nothing more of its body. Close lets the
// handler a moment to end by itself (closeUploadWait), then interrupts the body read that waits
// for the client, and returns.
func TestStalledClientDoesNotBlockClose(t *testing.T) {
	e := newEnv(t)
	got := make(chan struct{}, 1)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		got <- struct{}{}
		if _, err := sc.Write(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1})); err != nil {
			return
		}
		chunk := make([]byte, 64<<10)
		for { // more than the client's and kasd's socket buffers hold
			if _, err := sc.Write(chunk); err != nil {
				return
			}
		}
	})
	pr, pw := io.Pipe()
	defer pw.CloseWithError(errors.New("test over"))
	req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/upload"), pr)
	req.Header.Set("Authorization", "Bearer "+e.token())
	go func() { _, _ = pw.Write([]byte("the first bytes of an upload that then stalls")) }()
	responded := make(chan *http.Response, 1)
	go func() {
		resp, err := e.client.Do(req)
		if err != nil {
			resp = nil
		}
		responded <- resp // its body is read only after Close
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the agent")
	}
	resp := <-responded
	time.Sleep(500 * time.Millisecond) // kasd's writes to the client block
	closed := make(chan struct{})
	go func() { _ = e.server().Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Errorf("Server.Close did not return within 5s: blocked behind a client that neither reads nor sends")
	}
	pw.CloseWithError(errors.New("test over"))
	if resp != nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	<-closed
}
