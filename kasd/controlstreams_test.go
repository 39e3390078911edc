package kasd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
)

// rawAgent dials kasd as an agent with hello and returns the connection, its control stream
// and kasd's Welcome; the connection is closed when the test ends.
func (e *env) rawAgent(hello *api.Hello) (*quicgo.Conn, *quicgo.Stream, *api.Welcome) {
	e.t.Helper()
	qc, control, w, d := agentHandshakeFull(e.t, e.caFile, e.agentUDP, hello)
	e.t.Cleanup(func() { qc.CloseWithError(0, ""); d.Close() })
	return qc, control, w
}

// controlReaders counts kasd's goroutines reading an agent's control stream.
func controlReaders(t *testing.T) int {
	t.Helper()
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 2); err != nil {
		t.Fatal(err)
	}
	return strings.Count(b.String(), "kasd.(*Server).readControl(")
}

// sendOnStream opens a stream, writes m and FIN, and returns what kasd answers on it.
func sendOnStream(t *testing.T, qc *quicgo.Conn, m api.Message) (api.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.WriteFrame(st, m); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	return api.ReadFrame(st)
}

func waitClosed(t *testing.T, qc *quicgo.Conn, what string) {
	t.Helper()
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("kasd did not close the connection after %s", what)
	}
}

// TestControlOnStreams: an agent that offers api.FeatureControlOnStreams gets it in Welcome,
// kasd reads no control stream for it (one goroutine fewer per idle connection) and takes its
// Ping and GoAway from streams the agent opens; a stream that starts with anything else is
// refused with a protocol error. An agent that does not offer it (an older agentd) keeps the
// control stream: kasd reads it, and its GoAway there still works.
func TestControlOnStreams(t *testing.T) {
	e := newEnv(t)
	readers := controlReaders(t)

	qc, _, w := e.rawAgent(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], Replica: "new", Process: "p1", Services: []string{"web"},
		Features: api.FeatureControlOnStreams | 1<<20})
	if w.Features != api.FeatureControlOnStreams {
		t.Fatalf("Welcome features %#x, want %#x (what both support)", w.Features, api.FeatureControlOnStreams)
	}
	if n := controlReaders(t); n != readers {
		t.Fatalf("%d control-stream readers after an agent with control on streams connected, want %d", n, readers)
	}
	// A Ping on a stream: ignored, the stream ended cleanly, the connection stays.
	if m, err := sendOnStream(t, qc, &api.Ping{Padding: make([]byte, 64)}); m != nil || !errors.Is(err, io.EOF) && !isStopped(err) {
		t.Fatalf("a ping stream: kasd answered %v, %v; want the stream ended", m, err)
	}
	// Another kind of frame first: refused, named.
	m, err := sendOnStream(t, qc, &api.Hello{Version: api.ProtocolVersion})
	if e, ok := m.(*api.Error); err != nil || !ok || e.Code != api.CodeProtocol || !strings.Contains(e.Message, "not hello") {
		t.Fatalf("a stream starting with hello: kasd answered %v, %v; want a protocol error", m, err)
	}
	if qc.Context().Err() != nil {
		t.Fatal("the connection ended after a ping and a refused stream")
	}
	// A GoAway on a stream: kasd routes no more to the connection and, nothing being in flight,
	// closes it.
	// kasd may close the connection before the stream's end reaches us: that error is the
	// connection's (application error 0 from kasd), and the connection's context is cancelled
	// only after the stream has seen it.
	if _, err := sendOnStream(t, qc, &api.GoAway{Reason: "leaving"}); err != nil && !errors.Is(err, io.EOF) && !isStopped(err) && !closedByKasd(err) {
		t.Fatalf("a go_away stream: %v", err)
	}
	waitClosed(t, qc, "a GoAway on a stream")

	// An older agent: no feature, a control-stream reader, GoAway on the control stream.
	old, control, w := e.rawAgent(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens["beta"], Replica: "old", Process: "p2", Services: []string{"web"}})
	if w.Features != 0 {
		t.Fatalf("Welcome features %#x for an agent that offered none", w.Features)
	}
	// kasd starts the reader once Welcome is written: it may not have run yet.
	for deadline := time.Now().Add(5 * time.Second); controlReaders(t) != readers+1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d control-stream readers with an older agent connected, want %d", controlReaders(t), readers+1)
		}
	}
	// Its streams are module requests only: a GoAway there is a bad request head.
	m, err = sendOnStream(t, old, &api.GoAway{Reason: "leaving"})
	if e, ok := m.(*api.Error); err != nil || !ok || e.Code != api.CodeProtocol {
		t.Fatalf("a go_away stream from an agent without the feature: kasd answered %v, %v; want a protocol error", m, err)
	}
	if err := api.WriteFrame(control, &api.GoAway{Reason: "leaving"}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, old, "a GoAway on the control stream")
}

func isStopped(err error) bool {
	var se *quicgo.StreamError
	return errors.As(err, &se) && se.Remote
}

// closedByKasd reports whether err is kasd closing the connection without an error.
func closedByKasd(err error) bool {
	var ae *quicgo.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == 0
}
