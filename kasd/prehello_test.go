package kasd_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// TestStreamsBeforeWelcomeRefused: a connection that has not been welcomed (no token checked
// yet) and opens streams besides its control stream is closed as a protocol violation and
// counted: kasd accepts no other stream before Welcome, and quic-go keeps what arrives on a
// stream nobody accepted up to its 256 KiB window, so one unauthenticated connection made kasd
// hold --max-incoming-streams × 256 KiB (25 MiB at the default 100) for the handshake timeout,
// and --max-pending-handshakes of them 25 GB. A good agent still connects meanwhile.
func TestStreamsBeforeWelcomeRefused(t *testing.T) {
	const streams, perStream = 100, 256 << 10
	e := newEnv(t, func(c *kasd.Config) { c.HandshakeTimeout = 20 * time.Second })
	before := heapAlloc()
	qc := floodBeforeHandshake(t, e.caFile, e.agentUDP, api.ALPNAgent, streams, perStream)
	// Let every byte sent reach kasd (and be acknowledged: the sender's copies freed).
	time.Sleep(time.Second)
	grown := int64(heapAlloc()) - int64(before)
	t.Logf("heap grew by %.1f MiB with %d streams of %d KiB opened before Welcome", float64(grown)/(1<<20), streams, perStream>>10)
	if grown > 4<<20 {
		t.Errorf("an unauthenticated connection made the heap grow by %.1f MiB (bound 4 MiB)", float64(grown)/(1<<20))
	}
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Errorf("kasd kept the connection open")
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "stream_before_welcome"}); n != 1 {
		t.Errorf("kasd_limit_rejections_total{reason=stream_before_welcome} = %v, want 1", n)
	}
	// Another agent is not affected.
	good, _, _, gd, err := sendHello(t, e.caFile, e.agentUDP, &api.Hello{Version: api.ProtocolVersion, Token: e.tokens["beta"], Replica: "r", Process: "p", Services: []string{"web"}})
	if err != nil {
		t.Fatalf("a good agent: %v", err)
	}
	_ = good.CloseWithError(0, "")
	gd.Close()
}

func heapAlloc() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// floodBeforeHandshake dials addr with alpn, opens a control stream with one byte of a hello on
// it, then up to streams more streams with perStream bytes each, never finishing the hello. It
// stops early once kasd refuses a stream or closes the connection. The connection and its
// dialer are closed when the test ends.
func floodBeforeHandshake(t *testing.T, caFile, addr, alpn string, streams, perStream int) *quicgo.Conn {
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(caFile, "localhost", alpn)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := d.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = qc.CloseWithError(0, ""); d.Close() })
	control, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The control stream is opened (kasd accepts it) but the hello is not sent yet.
	if _, err := control.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, perStream)
	for range streams {
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := qc.OpenStreamSync(sctx)
		scancel()
		if err != nil {
			break // kasd closed the connection
		}
		if _, err := st.Write(chunk); err != nil {
			break
		}
	}
	return qc
}

// TestPeerStreamsBeforeHelloRefused: the same on the peer port, from a dialler that has not
// proved it is a peer: it was not bounded by any admission either, so any number of such
// connections each held up to 32 MiB (the connection window) for the peer handshake timeout.
func TestPeerStreamsBeforeHelloRefused(t *testing.T) {
	const streams, perStream = 100, 256 << 10
	f := newFleetEnv(t, 1)
	nd := f.nodes[0]
	before := heapAlloc()
	qc := floodBeforeHandshake(t, f.caFile, nd.peerLn.Addr().String(), api.ALPNPeer, streams, perStream)
	time.Sleep(time.Second)
	grown := int64(heapAlloc()) - int64(before)
	t.Logf("heap grew by %.1f MiB with %d streams of %d KiB opened before the peer hello", float64(grown)/(1<<20), streams, perStream>>10)
	if grown > 4<<20 {
		t.Errorf("a connection to the peer port that proved nothing made the heap grow by %.1f MiB (bound 4 MiB)", float64(grown)/(1<<20))
	}
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Errorf("kasd kept the connection open")
	}
	if n := counter(t, nd.promReg, "kasd_limit_rejections_total", map[string]string{"reason": "stream_before_welcome"}); n != 1 {
		t.Errorf("kasd_limit_rejections_total{reason=stream_before_welcome} = %v, want 1", n)
	}
}

// TestPeerPortSilentDiallerCounted: a dialler of the peer port that completes QUIC's handshake
// and then opens no control stream is closed after the peer handshake timeout and counted in
// kasd_peer_refusals_total{side="accept",reason="protocol"} ("no hello ... a timeout"), as one
// that opens the stream and sends nothing is; it was closed but counted nowhere.
func TestPeerPortSilentDiallerCounted(t *testing.T) {
	f := newFleetEnv(t, 1)
	nd := f.nodes[0]
	tlsConf, err := quic.ClientTLSConfig(f.caFile, "localhost", api.ALPNPeer)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := d.Dial(ctx, nd.peerLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	select {
	case <-qc.Context().Done():
	case <-time.After(8 * time.Second):
		t.Fatal("kasd kept a silent connection to its peer port open")
	}
	labels := map[string]string{"side": "accept", "reason": "protocol"}
	if n := counter(t, nd.promReg, "kasd_peer_refusals_total", labels); n != 1 {
		t.Errorf("kasd_peer_refusals_total%v = %v, want 1", labels, n)
	}
	if n := counter(t, nd.promReg, "kasd_peer_connections_total", map[string]string{"result": "refused"}); n != 1 {
		t.Errorf("kasd_peer_connections_total{result=refused} = %v, want 1", n)
	}
}
