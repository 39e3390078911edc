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
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testALPN = "qkas-httpstream-test"

// link is one real QUIC connection on loopback: the client side opens request streams, the
// server side hands each stream it accepts to a handler. Cleanup closes both ends and waits for
// every goroutine.
type link struct {
	t  testing.TB
	qc *quicgo.Conn
}

func newLink(t testing.TB, handle func(sc *quic.StreamConn)) *link {
	t.Helper()
	return newLinkConfig(t, quic.Config{}, handle)
}

// newLinkConfig is newLink with the server's QUIC configuration.
func newLinkConfig(t testing.TB, serverConf quic.Config, handle func(sc *quic.StreamConn)) *link {
	t.Helper()
	cert, caFile, err := quic.DevCertificate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, testALPN), serverConf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			qc, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer qc.CloseWithError(quic.ConnCodeShutdown, "")
				for {
					st, err := qc.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() { handle(quic.NewStreamConn(qc, st)) })
				}
			})
		}
	})
	clientTLS, err := quic.ClientTLSConfig(caFile, "localhost", testALPN)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(clientTLS, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	qc, err := d.Dial(dctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = qc.CloseWithError(quic.ConnCodeNoError, "")
		cancel()
		ln.Close()
		wg.Wait()
		d.Close()
	})
	return &link{t: t, qc: qc}
}

func (l *link) open() *quic.StreamConn {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := l.qc.OpenStreamSync(ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	return quic.NewStreamConn(l.qc, st)
}

// handlerFunc is what the server side of most tests runs: the agent's serveStream, reduced to
// the httpstream calls.
type handlerFunc func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request)

func serveHTTP(h handlerFunc) func(sc *quic.StreamConn) {
	return func(sc *quic.StreamConn) {
		_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			httpstream.Refuse(sc, api.Errorf(api.CodeProtocol, "bad head: %v", err))
			return
		}
		_ = sc.SetReadDeadline(time.Time{})
		serveHead(sc, f, h)
	}
}

// serveHead serves a request whose head was read already.
func serveHead(sc *quic.StreamConn, f *api.Request, h handlerFunc) {
	r, done, err := httpstream.NewRequest(context.Background(), sc, f)
	if err != nil {
		httpstream.Refuse(sc, api.Errorf(api.CodeOf(err), "%v", err))
		return
	}
	defer done()
	if err := httpstream.Accept(sc, f); err != nil {
		sc.Abort(quic.StreamCodeCanceled)
		return
	}
	w := httpstream.NewResponseWriter(sc, f)
	h(w, r, f)
	w.Finish()
}

// result records Options.Done and the body writers started through Options.Go.
type result struct {
	mu         sync.Mutex
	doneCalls  int
	clean      bool
	sent, recv int64
	started    atomic.Int64
	wg         sync.WaitGroup
}

func (res *result) opts() *httpstream.Options {
	return &httpstream.Options{
		Go: func(f func()) bool {
			res.started.Add(1)
			res.wg.Go(f)
			return true
		},
		Done: func(clean bool, sent, recv int64) {
			res.mu.Lock()
			defer res.mu.Unlock()
			res.doneCalls++
			res.clean, res.sent, res.recv = clean, sent, recv
		},
	}
}

// done waits for the body writers and returns what Done reported.
func (res *result) done(t *testing.T) (calls int, clean bool, sent, recv int64) {
	t.Helper()
	res.wg.Wait()
	res.mu.Lock()
	defer res.mu.Unlock()
	return res.doneCalls, res.clean, res.sent, res.recv
}

func frameFor(t *testing.T, r *http.Request) *api.Request {
	t.Helper()
	f := &api.Request{Kind: api.KindHTTP, Service: "svc", RequestID: "req-1"}
	httpstream.SetHTTP(f, r)
	return f
}

func newRequest(t *testing.T, method, target string, body io.Reader) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, "http://svc.example"+target, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func bodyOf(r *http.Request) *httpstream.Body {
	if r.Body == nil {
		return nil
	}
	return httpstream.NewBody(r.Body, 0)
}

// pattern returns n deterministic bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+int(seed)) % 251
	}
	return b
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// onlyReader hides the length of a body: the request is sent with an unknown content length.
type onlyReader struct{ io.Reader }

// A small GET: no body writer goroutine, the handler's small response arrives with its exact
// length (the head waited for the whole body: one stream write with FIN), hop-by-hop fields do
// not travel, and Done reports a clean end.
func TestSmallGET(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		if f.Has(api.FlagBody) || f.Has(api.FlagGated) || r.Body != http.NoBody {
			t.Errorf("GET without a body: flags %b, body %T", f.Flags, r.Body)
		}
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s host=%s a=%q drop=%q ka=%q", r.Method, r.URL.RequestURI(), r.Host,
			r.Header.Get("X-A"), r.Header.Get("X-Drop"), r.Header.Get("Keep-Alive")))
		w.Header().Set("Connection", "close") // hop-by-hop: never travels
		io.WriteString(w, "hello")
	}))
	req := newRequest(t, "GET", "/a/b%2Fc?q=1", nil)
	req.Header.Set("X-A", "1")
	req.Header.Set("Connection", "X-Drop")
	req.Header.Set("X-Drop", "secret")
	req.Header.Set("Keep-Alive", "timeout=5")
	var res result
	resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), nil, res.opts())
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "hello" {
		t.Fatalf("body %q, %v", b, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 5 {
		t.Errorf("status %d, content length %d; want 200 and 5 (the head waits for a small body)", resp.StatusCode, resp.ContentLength)
	}
	if got, want := resp.Header.Get("X-Seen"), `GET /a/b%2Fc?q=1 host=svc.example a="1" drop="" ka=""`; got != want {
		t.Errorf("server saw %s, want %s", got, want)
	}
	if resp.Header.Get("Connection") != "" {
		t.Errorf("hop-by-hop Connection header travelled: %v", resp.Header)
	}
	calls, clean, sent, recv := res.done(t)
	if calls != 1 || !clean || sent != 0 || recv != 5 || res.started.Load() != 0 {
		t.Errorf("Done %d times (clean %v, sent %d, recv %d), %d body writers; want 1, true, 0, 5, 0", calls, clean, sent, recv, res.started.Load())
	}
}

// A small body of known length leaves with the head (no body writer, not gated); larger and
// unknown-length bodies are written by the writer goroutine; both directions keep every byte.
func TestBodies(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the request body: %v", err)
			w.Abort()
			return
		}
		w.Header().Set("X-Request", fmt.Sprintf("%d %s cl=%d te=%v gated=%v", len(b), sum(b), r.ContentLength, r.TransferEncoding, f.Has(api.FlagGated)))
		var n int
		fmt.Sscan(r.URL.Query().Get("down"), &n)
		out := pattern(n, 3)
		if r.URL.Query().Get("unknown") == "" {
			w.Header().Set("Content-Length", fmt.Sprint(n))
		} else if n > 0 {
			w.Write(out[:1])
			w.Flush() // the head leaves before the length is known
			out = out[1:]
		}
		for len(out) > 0 {
			k := min(len(out), 10000)
			if _, err := w.Write(out[:k]); err != nil {
				return
			}
			out = out[k:]
		}
	}))
	for _, tc := range []struct {
		name      string
		up, down  int
		unknownUp bool
		unknownDn bool
		writer    bool // a body writer goroutine is expected
		gated     bool
	}{
		{name: "small known", up: 1000, down: 1000},
		{name: "exactly 16 KiB", up: 16 << 10, down: 16 << 10},
		{name: "mid known", up: 40 << 10, down: 40 << 10, writer: true},
		{name: "large known", up: 8 << 20, down: 8 << 20, writer: true, gated: true},
		{name: "small unknown", up: 1000, down: 1000, unknownUp: true, unknownDn: true, writer: true, gated: true},
		{name: "large unknown", up: 3 << 20, down: 3 << 20, unknownUp: true, unknownDn: true, writer: true, gated: true},
		{name: "empty unknown", up: 0, down: 0, unknownUp: true, unknownDn: true, writer: true, gated: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := pattern(tc.up, 1)
			var rd io.Reader = bytes.NewReader(up)
			if tc.unknownUp {
				rd = onlyReader{rd}
			}
			target := fmt.Sprintf("/x?down=%d", tc.down)
			if tc.unknownDn {
				target += "&unknown=1"
			}
			req := newRequest(t, "POST", target, rd)
			f := frameFor(t, req)
			var res result
			resp, err := httpstream.RoundTrip(context.Background(), l.open(), f, bodyOf(req), res.opts())
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			wantCL, wantTE := int64(tc.up), "[]"
			if tc.unknownUp {
				wantCL, wantTE = -1, "[chunked]"
			}
			if want := fmt.Sprintf("%d %s cl=%d te=%s gated=%v", tc.up, sum(up), wantCL, wantTE, tc.gated); resp.Header.Get("X-Request") != want {
				t.Errorf("server saw %s, want %s", resp.Header.Get("X-Request"), want)
			}
			if len(got) != tc.down || sum(got) != sum(pattern(tc.down, 3)) {
				t.Errorf("response body: %d bytes, want %d intact", len(got), tc.down)
			}
			if wantCL := int64(tc.down); tc.unknownDn && tc.down > 0 {
				if resp.ContentLength != -1 {
					t.Errorf("response content length %d, want -1 (flushed before the end)", resp.ContentLength)
				}
			} else if resp.ContentLength != wantCL {
				t.Errorf("response content length %d, want %d", resp.ContentLength, wantCL)
			}
			calls, clean, sent, recv := res.done(t)
			if calls != 1 || !clean || sent != int64(tc.up) || recv != int64(tc.down) {
				t.Errorf("Done %d times (clean %v, sent %d, recv %d); want once, clean, %d, %d", calls, clean, sent, recv, tc.up, tc.down)
			}
			if got := res.started.Load() > 0; got != tc.writer {
				t.Errorf("body writer started: %v, want %v", got, tc.writer)
			}
		})
	}
}

// Trailers: a response's trailers (declared, or with http.TrailerPrefix) arrive after its
// body; a framed request body arrives intact, and a request's trailers frame fills r.Trailer.
func TestTrailers(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the framed request body: %v", err)
			w.Abort()
			return
		}
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("X-Request", fmt.Sprintf("%d %s framed=%v trailer=%q", len(b), sum(b), f.Has(api.FlagFramed), r.Trailer.Get("X-Checksum")))
		out := pattern(100<<10, 9)
		w.Write(out)
		w.Header().Set("X-Sum", sum(out))
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	}))
	check := func(t *testing.T, resp *http.Response, wantReq string) {
		t.Helper()
		if resp.Trailer == nil {
			t.Fatal("a framed response has no Trailer map before its body is read")
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("X-Request") != wantReq {
			t.Errorf("server saw %s, want %s", resp.Header.Get("X-Request"), wantReq)
		}
		if resp.Trailer.Get("X-Sum") != sum(got) || resp.Trailer.Get("X-Late") != "late" {
			t.Errorf("trailers %v, want X-Sum %s and X-Late", resp.Trailer, sum(got))
		}
	}

	t.Run("through RoundTrip", func(t *testing.T) {
		up := pattern(200<<10, 2)
		req := newRequest(t, "PUT", "/t", bytes.NewReader(up))
		req.Trailer = http.Header{"X-Checksum": nil}
		f := frameFor(t, req)
		if !f.Has(api.FlagFramed) {
			t.Fatal("SetHTTP did not set FlagFramed for a request with trailers")
		}
		resp, err := httpstream.RoundTrip(context.Background(), l.open(), f, bodyOf(req), nil)
		if err != nil {
			t.Fatal(err)
		}
		// RoundTrip has no way to learn trailer values: it ends the body with an empty
		// trailers frame.
		check(t, resp, fmt.Sprintf("%d %s framed=true trailer=%q", len(up), sum(up), ""))
	})

	t.Run("hand-written request trailers", func(t *testing.T) {
		sc := l.open()
		up := pattern(150<<10, 4)
		f := &api.Request{Kind: api.KindHTTP, Service: "svc", Method: "POST", Target: "/t", ContentLength: -1, Flags: api.FlagBody | api.FlagFramed}
		out := api.AppendFrame(nil, f)
		for rest := up; len(rest) > 0; {
			k := min(len(rest), api.MaxDataSize)
			out = api.AppendFrame(out, &api.Data{Payload: rest[:k]})
			rest = rest[k:]
		}
		out = api.AppendFrame(out, &api.Data{}) // an empty data frame is allowed
		out = api.AppendFrame(out, &api.Trailers{Header: []api.KV{{Key: "x-checksum", Value: sum(up)}}})
		if _, err := sc.Write(out); err != nil {
			t.Fatal(err)
		}
		sc.CloseWrite()
		m, err := api.ReadExpect(sc, api.TypeResponse)
		if err != nil {
			t.Fatal(err)
		}
		rf := m.(*api.Response)
		if !rf.Has(api.FlagFramed) {
			t.Fatalf("response flags %b, want FlagFramed", rf.Flags)
		}
		h := http.Header{}
		httpstream.AddKVs(h, rf.Header, false)
		resp := &http.Response{Header: h, Trailer: http.Header{}}
		// Read the framed response by hand: data frames, then trailers.
		var got []byte
		for {
			m, err := api.ReadFrame(sc)
			if err != nil {
				t.Fatal(err)
			}
			if d, ok := m.(*api.Data); ok {
				got = append(got, d.Payload...)
				continue
			}
			httpstream.AddKVs(resp.Trailer, m.(*api.Trailers).Header, false)
			break
		}
		if _, err := sc.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("after the trailers frame: %v, want EOF", err)
		}
		sc.Close()
		resp.Body = io.NopCloser(bytes.NewReader(got))
		check(t, resp, fmt.Sprintf("%d %s framed=true trailer=%q", len(up), sum(up), sum(up)))
	})
}

// HEAD, 204 and 304 responses have no body, whatever the handler writes; a HEAD response keeps
// the Content-Length of the GET it describes.
func TestResponsesWithoutBody(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		var status int
		fmt.Sscan(r.URL.Query().Get("status"), &status)
		w.Header().Set("Content-Length", "1234")
		if status != 200 {
			w.Header().Del("Content-Length")
		}
		w.WriteHeader(status)
		w.Write([]byte("must not be sent"))
	}))
	for _, tc := range []struct {
		method string
		status int
		cl     int64
	}{
		{"HEAD", 200, 1234},
		{"GET", 204, -1},
		{"GET", 304, -1},
		{"POST", 204, -1},
	} {
		t.Run(fmt.Sprintf("%s %d", tc.method, tc.status), func(t *testing.T) {
			req := newRequest(t, tc.method, fmt.Sprintf("/?status=%d", tc.status), nil)
			var res result
			resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), nil, res.opts())
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || len(b) != 0 || resp.StatusCode != tc.status {
				t.Fatalf("%d %q %v", resp.StatusCode, b, err)
			}
			if resp.ContentLength != tc.cl {
				t.Errorf("content length %d, want %d", resp.ContentLength, tc.cl)
			}
			if calls, clean, _, recv := res.done(t); calls != 1 || !clean || recv != 0 {
				t.Errorf("Done %d times, clean %v, recv %d", calls, clean, recv)
			}
		})
	}
}

// Upgrade: a 101 turns the stream into raw bytes both ways, each direction ended by its FIN;
// a 101 to a request that did not ask for it is a protocol error.
func TestUpgrade(t *testing.T) {
	l := newLink(t, func(sc *quic.StreamConn) {
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		if f.Target == "/rogue" {
			// A hand-written 101 to a request without FlagUpgrade.
			sc.Write(api.AppendFrame(nil, &api.Response{Status: 101, ContentLength: -1}))
			sc.Close()
			return
		}
		serveHead(sc, f, func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
			if !f.Has(api.FlagUpgrade) {
				if _, err := w.Upgrade(); err == nil {
					t.Error("Upgrade of a request without FlagUpgrade succeeded")
				}
				w.WriteHeader(http.StatusUpgradeRequired)
				return
			}
			if r.Header.Get("Upgrade") != "echo" || r.Header.Get("Connection") != "Upgrade" {
				t.Errorf("upgrade request headers %v", r.Header)
			}
			w.Header().Set("Upgrade", "echo")
			rwc, err := w.Upgrade()
			if err != nil {
				t.Error(err)
				return
			}
			b, err := io.ReadAll(rwc) // up to the client's FIN
			if err != nil {
				t.Errorf("reading the upgraded stream: %v", err)
			}
			rwc.Write(bytes.ToUpper(b))
			rwc.Close()
		})
	})

	t.Run("echo", func(t *testing.T) {
		req := newRequest(t, "GET", "/ws", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "echo")
		f := frameFor(t, req)
		if !f.Has(api.FlagUpgrade) {
			t.Fatal("SetHTTP did not set FlagUpgrade")
		}
		var res result
		resp, err := httpstream.RoundTrip(context.Background(), l.open(), f, nil, res.opts())
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok {
			t.Fatalf("101 body %T is not an io.ReadWriteCloser", resp.Body)
		}
		payload := strings.Repeat("ping ", 20000)
		if _, err := io.WriteString(rwc, payload); err != nil {
			t.Fatal(err)
		}
		rwc.(interface{ CloseWrite() error }).CloseWrite()
		got, err := io.ReadAll(rwc)
		if err != nil || string(got) != strings.ToUpper(payload) {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
		rwc.Close()
		if calls, clean, sent, recv := res.done(t); calls != 1 || !clean || sent != int64(len(payload)) || recv != int64(len(payload)) {
			t.Errorf("Done %d times, clean %v, sent %d, recv %d", calls, clean, sent, recv)
		}
	})

	t.Run("not asked", func(t *testing.T) {
		resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "GET", "/plain", nil)), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired {
			t.Errorf("status %d", resp.StatusCode)
		}
	})

	t.Run("101 without upgrade", func(t *testing.T) {
		var res result
		_, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "GET", "/rogue", nil)), nil, res.opts())
		if api.CodeOf(err) != api.CodeProtocol {
			t.Fatalf("err %v, want protocol_error", err)
		}
		if calls, clean, _, _ := res.done(t); calls != 1 || clean {
			t.Errorf("Done %d times, clean %v", calls, clean)
		}
	})
}

// A gated body: the opener sends no more than its replay buffer before Accepted.
func TestGatedBody(t *testing.T) {
	const replay = httpstream.DefaultReplayLimit
	l := newLink(t, func(sc *quic.StreamConn) {
		defer sc.Close()
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			t.Error(err)
			return
		}
		w := httpstream.NewResponseWriter(sc, f)
		if !f.Has(api.FlagGated) || !f.Has(api.FlagBody) {
			t.Errorf("flags %b: want FlagBody|FlagGated", f.Flags)
		}
		first := make([]byte, replay)
		_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(sc, first); err != nil {
			t.Errorf("the replay buffer's worth did not arrive before Accepted: %v", err)
			return
		}
		// Nothing more may come before Accepted.
		_ = sc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := sc.Read(make([]byte, 1)); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("before Accepted: read %d bytes, %v; want nothing (deadline)", n, err)
			return
		}
		_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := httpstream.Accept(sc, f); err != nil {
			t.Error(err)
			return
		}
		rest, err := io.ReadAll(sc)
		if err != nil {
			t.Errorf("after Accepted: %v", err)
		}
		all := append(first, rest...)
		fmt.Fprintf(w, "%d %s", len(all), sum(all))
		w.Finish()
	})
	for _, unknown := range []bool{false, true} {
		t.Run(fmt.Sprintf("unknown length %v", unknown), func(t *testing.T) {
			up := pattern(300<<10, 5)
			var rd io.Reader = bytes.NewReader(up)
			if unknown {
				rd = onlyReader{rd}
			}
			req := newRequest(t, "POST", "/gated", rd)
			resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), bodyOf(req), nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%d %s", len(up), sum(up)); err != nil || string(got) != want {
				t.Errorf("server got %q (%v), want %q", got, err, want)
			}
		})
	}
}

// A refusal (an Error frame, or a reset with the refused code) is a *RemoteError and leaves the
// body replayable: the next attempt sends it whole. (That RoundTrip returns a refusal only after
// its body writer is done with the body is checked by the race detector: the next attempt reads
// the same Body at once.)
func TestRefusalKeepsBodyReplayable(t *testing.T) {
	var refused atomic.Int64
	l := newLink(t, func(sc *quic.StreamConn) {
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		switch f.Target {
		case "/refuse":
			refused.Add(1)
			httpstream.Refuse(sc, &api.Error{Code: api.CodeNotHolder, Message: "not here", RetryAfter: time.Second})
			return
		case "/reset":
			refused.Add(1)
			sc.Abort(quic.StreamCodeRefused)
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
	for _, size := range []int{1000, 40 << 10, 64 << 10, 300 << 10} {
		for _, unknown := range []bool{false, true} {
			for _, how := range []struct {
				target string
				code   api.Code
			}{{"/refuse", api.CodeNotHolder}, {"/reset", api.CodeShuttingDown}} {
				t.Run(fmt.Sprintf("%s %d unknown=%v", how.target, size, unknown), func(t *testing.T) {
					up := pattern(size, byte(size))
					var rd io.Reader = bytes.NewReader(up)
					if unknown {
						rd = onlyReader{rd}
					}
					req := newRequest(t, "POST", how.target, rd)
					f := frameFor(t, req)
					body := bodyOf(req)
					var res result
					_, err := httpstream.RoundTrip(context.Background(), l.open(), f, body, res.opts())
					var re *httpstream.RemoteError
					if !errors.As(err, &re) || re.Err.Code != how.code {
						t.Fatalf("err %v (%T), want a *RemoteError with %s", err, err, how.code)
					}
					if !body.Replayable() || body.Err() != nil {
						t.Fatalf("after a refusal: replayable %v, err %v", body.Replayable(), body.Err())
					}
					if calls, clean, _, _ := res.done(t); calls != 1 || clean {
						t.Errorf("Done %d times, clean %v; want once, not clean", calls, clean)
					}
					// The same frame and body, to a holder that takes it.
					f2 := *f
					f2.Target = "/take"
					resp, err := httpstream.RoundTrip(context.Background(), l.open(), &f2, body, nil)
					if err != nil {
						t.Fatal(err)
					}
					got, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if want := fmt.Sprintf("%d %s", size, sum(up)); err != nil || string(got) != want {
						t.Errorf("replayed body: server got %q (%v), want %q", got, err, want)
					}
				})
			}
		}
	}
	if refused.Load() == 0 {
		t.Fatal("no refusal happened")
	}
}

// A refusal that comes while the opener is still writing its first write (a large head, or a
// small body sent with the head, held back by flow control) is still read as a refusal: the
// peer's STOP_SENDING does not turn it into a broken stream.
func TestRefusalDuringFirstWrite(t *testing.T) {
	// A tiny receive window: the first write cannot complete before the server reads on,
	// and it reads only the head before it refuses.
	l := newLinkConfig(t, quic.Config{InitialStreamReceiveWindow: 2 << 10, MaxStreamReceiveWindow: 2 << 10}, func(sc *quic.StreamConn) {
		if _, err := httpstream.ReadRequest(sc); err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		httpstream.Refuse(sc, api.Errorf(api.CodeNotHolder, "not here"))
	})
	for _, tc := range []struct {
		name   string
		header int
		body   int
	}{
		{"small body", 0, 16 << 10},
		{"large head and small body", 40 << 10, 8 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := pattern(tc.body, 6)
			var rd io.Reader
			if tc.body > 0 {
				rd = bytes.NewReader(up)
			}
			req := newRequest(t, "POST", "/", rd)
			if tc.header > 0 {
				req.Header.Set("X-Large", strings.Repeat("h", tc.header))
			}
			body := bodyOf(req)
			_, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, req), body, nil)
			var re *httpstream.RemoteError
			if !errors.As(err, &re) || re.Err.Code != api.CodeNotHolder {
				t.Fatalf("err %v, want a *RemoteError with not_holder", err)
			}
			if !body.Replayable() {
				t.Error("the body is not replayable after the refusal")
			}
		})
	}
}

// A response cut after its head is an error for the reader, never a clean EOF: a reset, a FIN
// before the declared length, a framed body without its trailers, or more bytes than declared.
func TestCutResponses(t *testing.T) {
	l := newLink(t, func(sc *quic.StreamConn) {
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		w := httpstream.NewResponseWriter(sc, f)
		switch f.Target {
		case "/short": // the handler returns before writing its declared length: Finish resets
			w.Header().Set("Content-Length", "100000")
			w.Write(pattern(50000, 1))
			w.Finish()
		case "/abort-unknown":
			w.Write(pattern(50000, 1))
			w.Flush()
			w.Abort()
		case "/abort-framed":
			w.Header().Set("Trailer", "X-Sum")
			w.Write(pattern(50000, 1))
			w.Flush()
			w.Abort()
		case "/fin-early": // hand-written: FIN before the declared length
			out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 100})
			sc.Write(append(out, pattern(50, 1)...))
			sc.Close()
		case "/framed-fin": // hand-written: a framed body ended by FIN, without trailers
			out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
			out = api.AppendFrame(out, &api.Data{Payload: pattern(50, 1)})
			sc.Write(out)
			sc.Close()
		case "/reset-after-full": // hand-written: every declared byte, then a reset
			out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 50000})
			sc.Write(append(out, pattern(50000, 1)...))
			time.Sleep(20 * time.Millisecond)
			sc.Abort(quic.StreamCodeInternal)
		case "/too-long": // hand-written: more bytes than declared
			out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 10})
			sc.Write(append(out, pattern(20, 1)...))
			sc.Close()
		case "/wrong-frame": // hand-written: a response frame inside a framed body
			out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
			out = api.AppendFrame(out, &api.Response{Status: 200})
			sc.Write(out)
			sc.Close()
		}
	})
	declared := map[string]int{"/short": 100000, "/fin-early": 100, "/reset-after-full": 50000, "/too-long": 10}
	for _, target := range []string{"/short", "/abort-unknown", "/abort-framed", "/fin-early", "/framed-fin", "/reset-after-full", "/too-long", "/wrong-frame"} {
		t.Run(target, func(t *testing.T) {
			var res result
			resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "GET", target, nil)), nil, res.opts())
			if err == nil {
				// (A reset may also overtake the head: then RoundTrip itself fails.)
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("cut body read to a clean EOF (%d bytes)", len(b))
				}
				// A body of known length that ends badly never gives the reader all of its
				// declared bytes: a proxy passing them on would complete it for its client.
				if n, ok := declared[target]; ok && len(b) >= n {
					t.Errorf("read %d bytes of a bad body declared as %d", len(b), n)
				}
			}
			if c := api.CodeOf(err); c != api.CodeAgentFailed && c != api.CodeProtocol {
				t.Errorf("error %v: code %s, want agent_failed or protocol_error", err, c)
			}
			if calls, clean, _, _ := res.done(t); calls != 1 || clean {
				t.Errorf("Done %d times, clean %v", calls, clean)
			}
		})
	}
}

// Interim responses are skipped up to api.MaxInformational; more is a protocol error. The
// ResponseWriter itself never sends more than the limit.
func TestInformational(t *testing.T) {
	l := newLink(t, func(sc *quic.StreamConn) {
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		if f.Target == "/endless" {
			info := api.AppendFrame(nil, &api.Response{Status: 103, Header: []api.KV{{Key: "Link", Value: "</a.css>; rel=preload"}}})
			for {
				if _, err := sc.Write(info); err != nil {
					return
				}
			}
		}
		w := httpstream.NewResponseWriter(sc, f)
		for range 3 * api.MaxInformational {
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.WriteHeader(http.StatusContinue) // never passed on
		w.Header().Del("Link")
		io.WriteString(w, "final")
		w.Finish()
	})
	resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "GET", "/many", nil)), nil, nil)
	if err != nil {
		t.Fatalf("a handler writing many 103s: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "final" {
		t.Errorf("%d %q", resp.StatusCode, b)
	}
	resp.Body.Close()

	var res result
	_, err = httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "GET", "/endless", nil)), nil, res.opts())
	if !errors.Is(err, httpstream.ErrTooManyInformational) || api.CodeOf(err) != api.CodeProtocol {
		t.Fatalf("endless 103s: %v, want protocol_error wrapping ErrTooManyInformational", err)
	}
	if calls, clean, _, _ := res.done(t); calls != 1 || clean {
		t.Errorf("Done %d times, clean %v", calls, clean)
	}
}

// A head the writer cannot encode (too large, too many fields) reaches the opener as a typed
// refusal from the service side (service_unavailable), not as a broken stream.
func TestOversizeResponseHead(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("X-Big", strings.Repeat("b", api.MaxHeadSize))
		case "/many":
			for i := range api.MaxHeaderFields + 1 {
				w.Header().Set(fmt.Sprintf("X-F%d", i), "v")
			}
		}
		io.WriteString(w, "body")
	}))
	for _, path := range []string{"/big", "/many"} {
		t.Run(path, func(t *testing.T) {
			_, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, newRequest(t, "GET", path, nil)), nil, nil)
			var re *httpstream.RemoteError
			if !errors.As(err, &re) || re.Err.Code != api.CodeServiceUnavailable {
				t.Fatalf("err %v, want a *RemoteError with service_unavailable", err)
			}
		})
	}
}

// The response header timeout, the request's deadline and its cancellation each end the
// exchange with their own code and reset the stream, which the server sees.
func TestTimeoutsAndCancel(t *testing.T) {
	serverSaw := make(chan error, 8)
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		select {
		case <-r.Context().Done():
			serverSaw <- r.Context().Err()
		case <-time.After(10 * time.Second):
			serverSaw <- errors.New("the stream was not reset")
		}
	}))
	for _, tc := range []struct {
		name   string
		ctx    func() (context.Context, context.CancelFunc)
		opts   httpstream.Options
		code   api.Code
		header bool
	}{
		{name: "header timeout", ctx: func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			opts: httpstream.Options{ResponseHeaderTimeout: 100 * time.Millisecond}, code: api.CodeDeadlineExceeded, header: true},
		{name: "deadline", ctx: func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, code: api.CodeDeadlineExceeded},
		{name: "cancel", ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, code: api.CodeClientCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			var res result
			opts := res.opts()
			opts.ResponseHeaderTimeout = tc.opts.ResponseHeaderTimeout
			_, err := httpstream.RoundTrip(ctx, l.open(), frameFor(t, newRequest(t, "GET", "/wait", nil)), nil, opts)
			if api.CodeOf(err) != tc.code || errors.Is(err, httpstream.ErrHeaderTimeout) != tc.header {
				t.Fatalf("err %v, want %s (header timeout %v)", err, tc.code, tc.header)
			}
			if e := <-serverSaw; !errors.Is(e, context.Canceled) {
				t.Errorf("server handler: %v", e)
			}
			if calls, clean, _, _ := res.done(t); calls != 1 || clean {
				t.Errorf("Done %d times, clean %v", calls, clean)
			}
		})
	}
}

// A handler that aborts its response the way httputil.ReverseProxy does when its backend breaks
// mid-body (panic(http.ErrAbortHandler), which it does only under a server: NewRequest's context
// says so) gets the stream reset: the client never sees a chunked body end as if complete.
func TestHandlerAbortResetsStream(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		if r.Context().Value(http.ServerContextKey) == nil {
			t.Error("no server in the request context: ReverseProxy would end a cut body cleanly")
		}
		defer w.Recover()
		w.Write(pattern(1000, 3))
		w.Flush()
		panic(http.ErrAbortHandler)
	}))
	r := newRequest(t, "GET", "/", nil)
	resp, err := httpstream.RoundTrip(context.Background(), l.open(), frameFor(t, r), nil, nil)
	if err != nil {
		return // the reset overtook the head: no response at all, fine
	}
	defer resp.Body.Close()
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Fatalf("aborted response read to a clean end (%d bytes)", len(b))
	}
}
