package httpstream_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

const testALPN = "qkas-test"

// pair is a client connection and the http.Server serving the streams it opens, over real QUIC
// on loopback.
type pair struct {
	cli, srv *quicgo.Conn
	hs       *http.Server
}

// newPair starts an http.Server with handler over the streams of one QUIC connection on
// loopback. QKAS_QLOG=1 writes qlog traces to $QLOGDIR (default ".").
func newPair(tb testing.TB, handler http.Handler) *pair {
	tb.Helper()
	return newPairCheck(tb, nil, handler)
}

func newStreamConn(p *pair, st *quicgo.Stream) *quic.StreamConn { return quic.NewStreamConn(p.cli, st) }

// newPairCheck is newPair with a CheckFunc for the listener.
func newPairCheck(tb testing.TB, check httpstream.CheckFunc, handler http.Handler) *pair {
	tb.Helper()
	cert, caFile, err := quic.DevCertificate(tb.TempDir(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	cliTLS, err := quic.ClientTLSConfig(caFile, "localhost", testALPN)
	if err != nil {
		tb.Fatal(err)
	}
	qconf := quic.Config{}.QUICConfig()
	if os.Getenv("QKAS_QLOG") != "" {
		qconf.Tracer = qlog.DefaultConnectionTracer
	}
	ln, err := quicgo.ListenAddr("127.0.0.1:0", quic.ServerTLSConfig(cert, testALPN), qconf)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cli, err := quicgo.DialAddr(ctx, ln.Addr().String(), cliTLS, qconf)
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := ln.Accept(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	p := &pair{cli: cli, srv: srv}
	p.hs = &http.Server{Handler: handler, ConnContext: httpstream.ConnContext}
	done := make(chan struct{})
	sln := httpstream.NewListener(srv, check, nil)
	go func() { defer close(done); _ = p.hs.Serve(sln) }()
	tb.Cleanup(func() {
		_ = p.hs.Close()
		_ = cli.CloseWithError(0, "")
		_ = srv.CloseWithError(0, "")
		<-done
		_ = ln.Close()
	})
	return p
}

// get makes one request on a new stream and reads the response to its end.
func (p *pair) get(tb testing.TB, req *http.Request, opts *httpstream.Options) string {
	ctx := req.Context()
	st, err := p.cli.OpenStreamSync(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	frame := &api.Request{Kind: api.KindHTTP, Service: "svc", RequestID: "r1"}
	resp, err := httpstream.RoundTrip(ctx, quic.NewStreamConn(p.cli, st), frame, req, opts)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

var body1K = strings.Repeat("x", 1024)

func serve1K(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body1K)))
	_, _ = io.WriteString(w, body1K)
}

// BenchmarkRoundTripGET measures one 1 KiB GET through the tunnel (client RoundTrip, agent-side
// http.Server over httpstream.Conn), sequentially. It reports the QUIC packets each side sent
// per request.
func BenchmarkRoundTripGET(b *testing.B) {
	p := newPair(b, http.HandlerFunc(serve1K))
	req, _ := http.NewRequest("GET", "http://svc/x", nil)
	p.get(b, req, nil) // warm up
	time.Sleep(50 * time.Millisecond)
	c0, s0 := p.cli.ConnectionStats(), p.srv.ConnectionStats()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if got := p.get(b, req, nil); len(got) != len(body1K) {
			b.Fatalf("body %d bytes", len(got))
		}
	}
	b.StopTimer()
	time.Sleep(50 * time.Millisecond) // let trailing ACKs / FINs settle
	c1, s1 := p.cli.ConnectionStats(), p.srv.ConnectionStats()
	n := float64(b.N)
	b.ReportMetric(float64(c1.PacketsSent-c0.PacketsSent)/n, "cli-pkts/op")
	b.ReportMetric(float64(s1.PacketsSent-s0.PacketsSent)/n, "srv-pkts/op")
	b.ReportMetric(float64(c1.BytesSent-c0.BytesSent)/n, "cli-B/op")
	b.ReportMetric(float64(s1.BytesSent-s0.BytesSent)/n, "srv-B/op")
}

// BenchmarkRoundTripGETProxy is BenchmarkRoundTripGET with the agent-side handler proxying to a
// TCP backend, as agentd does: the response is then not ready when the Request frame is read.
func BenchmarkRoundTripGETProxy(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(serve1K))
	defer backend.Close()
	u, _ := url.Parse(backend.URL)
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }}
	defer backend.Client().CloseIdleConnections()
	p := newPair(b, rp)
	req, _ := http.NewRequest("GET", "http://svc/x", nil)
	p.get(b, req, nil) // warm up
	time.Sleep(50 * time.Millisecond)
	c0, s0 := p.cli.ConnectionStats(), p.srv.ConnectionStats()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if got := p.get(b, req, nil); len(got) != len(body1K) {
			b.Fatalf("body %d bytes", len(got))
		}
	}
	b.StopTimer()
	time.Sleep(50 * time.Millisecond)
	c1, s1 := p.cli.ConnectionStats(), p.srv.ConnectionStats()
	n := float64(b.N)
	b.ReportMetric(float64(c1.PacketsSent-c0.PacketsSent)/n, "cli-pkts/op")
	b.ReportMetric(float64(s1.PacketsSent-s0.PacketsSent)/n, "srv-pkts/op")
}
