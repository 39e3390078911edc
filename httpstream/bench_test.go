package httpstream_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// BenchmarkExchange is one small GET over a real QUIC connection on loopback, both ends in this
// process: kasd's side (RoundTrip, reading the response) and agentd's (Serve, a handler that
// answers 1 KiB). Its allocs/op are the stream path's per-request allocations, quic-go's
// included; docs/performance.md quotes them.
func BenchmarkExchange(b *testing.B) {
	body := strings.Repeat("a", 1024)
	l := newLink(b, func(sc *quic.StreamConn) {
		httpstream.Serve(context.Background(), sc, 5*time.Second, func(*api.Request) *api.Error { return nil },
			func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
				w.Header()["Content-Type"] = []string{"text/plain"}
				io.WriteString(w, body)
			})
	})
	r, err := http.NewRequest("GET", "http://svc.example/small?x=1", nil)
	if err != nil {
		b.Fatal(err)
	}
	r.Header.Set("User-Agent", "bench")
	r.Header.Set("Accept", "*/*")
	f := &api.Request{Kind: api.KindHTTP, Service: "svc", RequestID: "req-1"}
	httpstream.SetHTTP(f, r)
	ctx := context.Background()
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		resp, err := httpstream.RoundTrip(ctx, l.open(), f, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.ReadFull(resp.Body, buf[:1024])
		resp.Body.Close()
		if n != 1024 || resp.StatusCode != 200 {
			b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
		}
	}
}
