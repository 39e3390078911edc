package httpstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// A client that sends the start of its body and then goes quiet must not hold a refused
// request: RoundTrip returns the refusal at once, although its body writer is still waiting for
// the client. The next attempt takes that read over: once the client goes on, the next holder
// gets the whole body, in order. (RoundTrip used to wait for its writer, that is for the
// client's next bytes, before returning a refusal.)
func TestRefusalDoesNotWaitForStalledBody(t *testing.T) {
	const first = 1 << 10
	l := newLink(t, func(sc *quic.StreamConn) {
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		if f.Target == "/refuse" {
			// Refused once the start of the body is here: the opener's writer is then
			// waiting for the client.
			if _, err := io.ReadFull(sc, make([]byte, first)); err != nil {
				sc.Abort(quic.StreamCodeInternal)
				return
			}
			httpstream.Refuse(sc, &api.Error{Code: api.CodeNotHolder, Message: "not here"})
			return
		}
		serveHead(sc, f, func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				w.Abort()
				return
			}
			fmt.Fprintf(w, "%d %s", len(b), sum(b))
		})
	})
	for _, tc := range []struct {
		size  int
		known bool // known length within the replay buffer: not gated
	}{{40 << 10, true}, {300 << 10, false}} {
		t.Run(fmt.Sprintf("%d known=%v", tc.size, tc.known), func(t *testing.T) {
			up := pattern(tc.size, 3)
			pr, pw := io.Pipe()
			defer pw.Close()
			req := newRequest(t, "POST", "/refuse", pr)
			if tc.known {
				req.ContentLength = int64(tc.size)
			}
			f := frameFor(t, req)
			body := httpstream.NewBody(pr, 0)
			go func() { _, _ = pw.Write(up[:first]) }() // then the client goes quiet
			var res result
			refused := make(chan error, 1)
			go func() {
				_, err := httpstream.RoundTrip(context.Background(), l.open(), f, body, res.opts())
				refused <- err
			}()
			select {
			case err := <-refused:
				var re *httpstream.RemoteError
				if !errors.As(err, &re) || re.Err.Code != api.CodeNotHolder {
					t.Fatalf("err %v, want a not_holder refusal", err)
				}
			case <-time.After(5 * time.Second):
				_ = pw.CloseWithError(errors.New("test over"))
				t.Fatal("RoundTrip waited for the silent client before returning the refusal")
			}
			if !body.Replayable() || body.Err() != nil {
				t.Fatalf("after the refusal: replayable %v, err %v", body.Replayable(), body.Err())
			}
			f2 := *f
			f2.Target = "/take"
			go func() { _, _ = pw.Write(up[first:]); _ = pw.Close() }() // the client goes on
			resp, err := httpstream.RoundTrip(context.Background(), l.open(), &f2, body, res.opts())
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%d %s", tc.size, sum(up)); err != nil || string(got) != want {
				t.Errorf("the next holder got %q (%v), want %q", got, err, want)
			}
			res.done(t) // both writers end
		})
	}
}

// Stop ends a request body whose client went quiet: the read the body writer waits in is
// interrupted (Interrupt), the writer ends, and the interruption is not counted as the
// client's error.
func TestStopInterruptsStalledBody(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		w.WriteHeader(http.StatusOK)
		w.Flush()
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	pr, pw := io.Pipe()
	defer pw.Close()
	req := newRequest(t, "POST", "/upload", pr)
	f := frameFor(t, req)
	body := httpstream.NewBody(pr, 0)
	body.Interrupt = func() { _ = pr.CloseWithError(errors.New("interrupted")) }
	go func() { _, _ = pw.Write(make([]byte, 1<<10)) }() // then the client goes quiet
	var res result
	resp, err := httpstream.RoundTrip(context.Background(), l.open(), f, body, res.opts())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The writer is (or soon will be) waiting for the client; Stop must end it either way.
	time.Sleep(50 * time.Millisecond)
	interrupted := body.Stop()
	ended := make(chan struct{})
	go func() { res.done(t); close(ended) }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		_ = pw.CloseWithError(errors.New("test over"))
		<-ended
		t.Fatal("the body writer did not end after Stop")
	}
	if !interrupted {
		t.Error("Stop did not interrupt the read in progress")
	}
	if body.Err() != nil {
		t.Errorf("Err after Stop = %v, want nil (not the client's fault)", body.Err())
	}
	if body.Stop() {
		t.Error("a second Stop interrupted again")
	}
}

// The body NewRequest builds ends a Read blocked on a client that paused its upload when it is
// closed (as internal/upstream closes it when the service's response ends first), from another
// goroutine and more than once; the opener then stops the upload and takes the answer as a
// complete one. Its Close used to interrupt nothing: agentd waited for the client's next bytes
// and held a service's early answer (a 401 after the first chunk) from a client that waited
// for it.
func TestRequestBodyCloseInterruptsRead(t *testing.T) {
	errNotInterrupted := errors.New("not interrupted in 5s")
	interrupted := make(chan error, 1)
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		if _, err := io.ReadFull(r.Body, make([]byte, 5)); err != nil {
			w.Abort()
			return
		}
		read := make(chan error, 1)
		go func() {
			_, err := r.Body.Read(make([]byte, 1<<10)) // blocks: the client waits for the answer
			read <- err
		}()
		time.Sleep(20 * time.Millisecond)
		_ = r.Body.Close()
		_ = r.Body.Close()
		select {
		case err := <-read:
			interrupted <- err
		case <-time.After(5 * time.Second):
			interrupted <- errNotInterrupted
		}
		http.Error(w, "nope", http.StatusUnauthorized)
	}))
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("first")) }() // then the client waits for the answer
	var res result
	resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "POST", "/upload", pr)), httpstream.NewBody(pr, 0), res.opts())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusUnauthorized || string(got) != "nope\n" {
		t.Fatalf("got %d %q (%v), want 401 \"nope\\n\"", resp.StatusCode, got, err)
	}
	if err := <-interrupted; err == nil || err == errNotInterrupted {
		t.Fatalf("a Read blocked on the stream returned %v after Close", err)
	}
	// The client goes on; the opener's writer stops at the agent's STOP_SENDING (code 0), and
	// the exchange is clean: the answer was whole.
	go func() { _, _ = pw.Write(make([]byte, 64<<10)); _ = pw.Close() }()
	if calls, clean, _, _ := res.done(t); calls != 1 || !clean {
		t.Errorf("Done: %d calls, clean %v; want 1, true", calls, clean)
	}
}
