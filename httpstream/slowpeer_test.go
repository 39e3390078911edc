package httpstream_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// The header clock restarts each time the peer takes a step of the body: a peer that takes a
// large body slowly but steadily (here its small flow-control window and a reader that reads
// 4 KiB every 20 ms; in chaos loss, a congested lossy peer link) is not cut with
// deadline_exceeded while the bytes move, also when the client's body is all there at once (the
// body writer reads 256 KiB at a time). A peer that stops taking the body is still cut. Before
// the fix, each of those reads went to the stream in one write timed whole: the upload got 504
// after the timeout, its body still moving (chaos loss: 2 POSTs of 150-190 KB lost, 504 after
// the agent's service had read 67-93 % of them).
func TestSlowPeerTakingBodyOutlastsHeaderTimeout(t *testing.T) {
	// The reader takes ~200 KB/s: a step of the body (writeStep, 64 KiB) in ~0.33 s, half the
	// timeout; one 256 KiB read of the body in ~1.3 s, twice the timeout.
	const timeout = 700 * time.Millisecond
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	l := newLinkConfig(t, quic.Config{InitialStreamReceiveWindow: 8 << 10, MaxStreamReceiveWindow: 8 << 10},
		serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
			h := sha256.New()
			buf := make([]byte, 4<<10)
			n := 0
			for {
				k, err := io.ReadFull(r.Body, buf)
				h.Write(buf[:k])
				n += k
				if err != nil {
					break
				}
				if r.URL.Path == "/stops" && n >= 32<<10 {
					select { // takes nothing more, answers nothing
					case <-r.Context().Done():
					case <-stop:
					}
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
		}))
	up := pattern(384<<10, 9)

	t.Run("slow", func(t *testing.T) {
		req := newRequest(t, "POST", "/slow", bytes.NewReader(up))
		var res result
		opts := res.opts()
		opts.ResponseHeaderTimeout = timeout
		start := time.Now()
		resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), bodyOf(req), opts)
		if err != nil {
			t.Fatalf("after %v: %v (the peer was still taking the body)", time.Since(start).Round(time.Millisecond), err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d %s", len(up), sum(up)); err != nil || string(got) != want {
			t.Errorf("server got %q (%v), want %q", got, err, want)
		}
		if took := time.Since(start); took < 2*timeout {
			t.Errorf("the upload took %v, less than twice the header timeout %v: the test proves nothing", took, timeout)
		}
		res.done(t)
	})
	t.Run("stops", func(t *testing.T) {
		req := newRequest(t, "POST", "/stops", bytes.NewReader(up))
		var res result
		opts := res.opts()
		opts.ResponseHeaderTimeout = timeout
		start := time.Now()
		_, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), bodyOf(req), opts)
		if !errors.Is(err, httpstream.ErrHeaderTimeout) || api.CodeOf(err) != api.CodeDeadlineExceeded {
			t.Fatalf("after %v: %v, want the header timeout", time.Since(start).Round(time.Millisecond), err)
		}
		if took := time.Since(start); took > 10*timeout {
			t.Errorf("a peer that stopped taking the body was cut after %v (header timeout %v)", took, timeout)
		}
		res.done(t)
	})
}
