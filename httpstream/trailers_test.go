package httpstream_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// A handler that writes a small body and then sets a trailer (http.TrailerPrefix, the net/http
// way for trailers not declared in advance; or a declared one) without flushing: the head is
// sent by Finish, after the trailer was set. The response must still be valid (and carry the
// trailer): "Trailer:X-Late" is not a field name a head may carry.
func TestTrailerSetBeforeHeadSent(t *testing.T) {
	for _, declared := range []bool{false, true} {
		l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
			if declared {
				w.Header().Set("Trailer", "X-Late")
			}
			io.WriteString(w, "small")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		}))
		req := newRequest(t, "GET", "/t", nil)
		resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), nil, nil)
		if err != nil {
			t.Errorf("declared=%v: %v", declared, err)
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "small" {
			t.Errorf("declared=%v: body %q, %v", declared, b, err)
		}
		if resp.Trailer.Get("X-Late") != "late" {
			t.Errorf("declared=%v: trailers %v, want X-Late: late", declared, resp.Trailer)
		}
	}
}

// FrameBody frames a body whose head declares no trailer, so that trailers set after the head
// left (a proxied chunked body's, known at its end) still reach the peer.
func TestFrameBodyCarriesUndeclaredTrailers(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		w.FrameBody()
		io.WriteString(w, "streamed")
		w.Flush() // the head leaves without a trailer declared
		w.Header().Set(http.TrailerPrefix+"X-Sum", "abc")
	}))
	req := newRequest(t, "GET", "/t", nil)
	resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "streamed" {
		t.Fatalf("body %q, %v", b, err)
	}
	if resp.Trailer.Get("X-Sum") != "abc" {
		t.Errorf("trailers %v, want X-Sum: abc", resp.Trailer)
	}
}
