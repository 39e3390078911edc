package httpstream_test

import (
	"context"
	"io"
	"testing"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// TestResponseBodyReadReady: a RoundTrip response's body says whether its bytes came with the
// head (kasd then sends head and body in one write) or are still to come (kasd flushes the head
// first: a watch's first event may be minutes away). The probe consumes nothing.
func TestResponseBodyReadReady(t *testing.T) {
	release := make(chan struct{})
	l := newLink(t, func(sc *quic.StreamConn) {
		f, err := api.ReadFrame(sc)
		if err != nil {
			return
		}
		head := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1})
		if f.(*api.Request).Target == "/together" {
			sc.Write(append(head, "data: 1\n\n"...))
		} else {
			sc.Write(head)
			<-release
			sc.Write([]byte("data: 1\n\n"))
		}
		sc.Close()
	})
	for _, tc := range []struct {
		target string
		want   bool
	}{{"/together", true}, {"/late", false}} {
		resp, err := httpstream.RoundTrip(context.Background(), l.open(), &api.Request{Kind: api.KindHTTP, Service: "svc", Method: "GET", Target: tc.target}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Body.(httpstream.ReadyReader).ReadReady(); got != tc.want {
			t.Errorf("%s: ReadReady = %v, want %v", tc.target, got, tc.want)
		}
		if !tc.want {
			close(release)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "data: 1\n\n" || err != nil {
			t.Errorf("%s: body %q, %v", tc.target, b, err)
		}
	}
}
