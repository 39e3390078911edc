package quic

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

func TestRoundTripAndHalfClose(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	type result struct {
		got []byte
		err error
	}
	results := make(chan result, 1)
	srv := serve(t, ln, func(sc *StreamConn) {
		defer sc.Close()
		got, err := io.ReadAll(sc) // ends at the client's FIN (CloseWrite)
		results <- result{got, err}
		// The client half-closed: we can still answer.
		sc.Write([]byte("world"))
	})
	d := newDialer(t, clientTLS, Config{})
	conn := dial(t, d, ln.Addr().String())
	if got := conn.ConnectionState().TLS.NegotiatedProtocol; got != testALPN {
		t.Errorf("client ALPN = %q, want %q", got, testALPN)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc := NewStreamConn(conn, s)
	defer sc.Close()
	var _ net.Conn = sc
	if sc.LocalAddr().String() != conn.LocalAddr().String() || sc.RemoteAddr().String() != ln.Addr().String() {
		t.Errorf("addrs = %v -> %v, want %v -> %v", sc.LocalAddr(), sc.RemoteAddr(), conn.LocalAddr(), ln.Addr())
	}
	if _, err := sc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := sc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := sc.CloseWrite(); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := sc.Write([]byte("more")); !errors.Is(err, quicgo.ErrStreamClosed) {
		t.Errorf("Write after CloseWrite = %v, want ErrStreamClosed", err)
	}
	if !errors.Is(context.Cause(sc.Context()), quicgo.ErrStreamClosed) {
		t.Errorf("stream context cause after CloseWrite = %v, want ErrStreamClosed", context.Cause(sc.Context()))
	}
	r := <-results
	if r.err != nil || string(r.got) != "hello" {
		t.Fatalf("server read %q, %v; want hello, nil", r.got, r.err)
	}
	back, err := io.ReadAll(sc)
	if err != nil || string(back) != "world" {
		t.Fatalf("client read %q, %v; want world, nil", back, err)
	}
	serverConn := <-srv.conns
	if got := serverConn.ConnectionState().TLS.NegotiatedProtocol; got != testALPN {
		t.Errorf("server ALPN = %q, want %q", got, testALPN)
	}
}

// TestAbort: the peer sees a *quicgo.StreamError with our code on both directions.
func TestAbort(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	readErr, writeErr := make(chan error, 1), make(chan error, 1)
	serve(t, ln, func(sc *StreamConn) {
		defer sc.Close()
		_, err := io.Copy(io.Discard, sc)
		readErr <- err
		for {
			if _, err := sc.Write([]byte("x")); err != nil {
				writeErr <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	conn := dial(t, newDialer(t, clientTLS, Config{}), ln.Addr().String())
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sc := NewStreamConn(conn, s)
	if _, err := sc.Write([]byte("partial request")); err != nil {
		t.Fatal(err)
	}
	sc.Abort(StreamCodeCanceled)
	sc.Abort(StreamCodeInternal) // idempotent: the first code wins
	var serr *quicgo.StreamError
	if _, err := sc.Read(make([]byte, 1)); !errors.As(err, &serr) || serr.Remote || serr.ErrorCode != StreamCodeCanceled {
		t.Errorf("Read after Abort = %v, want local StreamError with code %#x", err, StreamCodeCanceled)
	}
	if err := sc.Close(); err != nil { // only marks the StreamConn closed after Abort
		t.Errorf("Close after Abort = %v", err)
	}

	for _, ch := range []chan error{readErr, writeErr} {
		if err := <-ch; !errors.As(err, &serr) || serr.ErrorCode != StreamCodeCanceled || !serr.Remote {
			t.Errorf("server got %v, want remote StreamError with code %#x", err, StreamCodeCanceled)
		}
	}
}

// TestClose: Close unblocks a blocked Read and a Write blocked on flow control, and the peer
// sees a STOP_SENDING with StreamCodeNoError.
func TestClose(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	writeErr := make(chan error, 1)
	release := make(chan struct{})
	serve(t, ln, func(sc *StreamConn) {
		defer sc.Close()
		sc.Read(make([]byte, 1)) // the client's first byte; then never read again
		for {
			if _, err := sc.Write(make([]byte, 1024)); err != nil {
				writeErr <- err
				break
			}
		}
		<-release
	})
	// Before serve's cleanup, which waits for the handler: a failed check must not hang it.
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	conn := dial(t, newDialer(t, clientTLS, Config{}), ln.Addr().String())
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sc := NewStreamConn(conn, s)
	if _, err := sc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(sc, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	clientWrite := make(chan error, 1)
	go func() {
		// Far more than the server's stream window, which it never reads: this blocks.
		_, err := sc.Write(make([]byte, 8*DefaultMaxStreamReceiveWindow))
		clientWrite <- err
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-clientWrite:
		t.Fatalf("Write returned %v before Close, want it blocked on flow control", err)
	default:
	}
	if err := sc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sc.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	select {
	case err := <-clientWrite:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Write after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Write")
	}
	if _, err := sc.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
	var serr *quicgo.StreamError
	if err := <-writeErr; !errors.As(err, &serr) || serr.ErrorCode != StreamCodeNoError || !serr.Remote {
		t.Errorf("server Write = %v, want remote StreamError with code 0", err)
	}
}

func TestALPNMismatch(t *testing.T) {
	serverTLS, _ := testTLS(t)
	_, clientTLS := testTLS(t, "other")
	clientTLS.InsecureSkipVerify = true // only ALPN may fail
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, nil)
	d := newDialer(t, clientTLS, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := d.Dial(ctx, ln.Addr().String())
	if err == nil {
		conn.CloseWithError(0, "")
		t.Fatal("Dial succeeded with mismatched ALPN")
	}
	var terr *quicgo.TransportError
	if !errors.As(err, &terr) {
		t.Errorf("Dial = %v, want a TLS alert as *quicgo.TransportError", err)
	}
}

func TestMissingNextProtos(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	serverTLS.NextProtos, clientTLS.NextProtos = nil, nil
	if ln, err := Listen("127.0.0.1:0", serverTLS, Config{}); err == nil {
		ln.Close()
		t.Error("Listen accepted a tls.Config without NextProtos")
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if ln, err := ListenPacketConn(pc, serverTLS, Config{}); err == nil {
		ln.Close()
		t.Error("ListenPacketConn accepted a tls.Config without NextProtos")
	}
	if _, err := pc.WriteTo([]byte("x"), pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ListenPacketConn did not close the socket it owns on error: %v", err)
	}
	if d, err := NewDialer(clientTLS, Config{}); err == nil {
		d.Close()
		t.Error("NewDialer accepted a tls.Config without NextProtos")
	}
	if _, err := Dial(context.Background(), "127.0.0.1:1", clientTLS, Config{}); err == nil || !strings.Contains(err.Error(), "NextProtos") {
		t.Errorf("Dial = %v, want NextProtos error", err)
	}
}

// TestDeadPeerNoticed: the server's socket disappears without a word; keep-alives go
// unanswered and the client's connection ends after its idle timeout.
func TestDeadPeerNoticed(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	cfg := Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: 600 * time.Millisecond}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ListenPacketConn(pc, serverTLS, cfg)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln, echo)
	conn := dial(t, newDialer(t, clientTLS, cfg), ln.Addr().String())

	// Idle for longer than the idle timeout: keep-alives hold the connection up.
	time.Sleep(2 * cfg.MaxIdleTimeout)
	if err := context.Cause(conn.Context()); err != nil {
		t.Fatalf("connection ended while the peer was alive: %v", err)
	}

	pc.Close() // crash: no CONNECTION_CLOSE is sent
	start := time.Now()
	select {
	case <-conn.Context().Done():
	case <-time.After(2 * cfg.MaxIdleTimeout):
		t.Fatalf("connection still up %v after the peer died", time.Since(start))
	}
	var idle *quicgo.IdleTimeoutError
	if err := context.Cause(conn.Context()); !errors.As(err, &idle) {
		t.Errorf("connection ended with %v, want *quicgo.IdleTimeoutError", err)
	}
}

// TestStatelessReset: a server restarted with the same key makes its old clients' connections
// fail at their next packet, long before their idle timeout.
func TestStatelessReset(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	keyFile := t.TempDir() + "/reset.key"
	key, err := LoadOrCreateStatelessResetKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{MaxIdleTimeout: 30 * time.Second, StatelessResetKey: key}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln1, err := ListenPacketConn(pc, serverTLS, cfg)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln1, echo)
	conn := dial(t, newDialer(t, clientTLS, Config{MaxIdleTimeout: 30 * time.Second}), ln1.Addr().String())
	roundTrip(t, conn, []byte("before the crash"))

	pc.Close() // crash: the connections die without CONNECTION_CLOSE
	key2, err := LoadOrCreateStatelessResetKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln2, err := Listen(pc.LocalAddr().String(), serverTLS, Config{MaxIdleTimeout: 30 * time.Second, StatelessResetKey: key2})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln2, echo)

	start := time.Now()
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Write(bytes.Repeat([]byte("x"), 200)) // large enough to be answered by a reset
	waitStatelessReset(t, conn, start, 5*time.Second)
}

// waitStatelessReset fails t unless conn ends with a stateless reset within d (the tests'
// idle timeout is 30s).
func waitStatelessReset(t *testing.T, conn *quicgo.Conn, start time.Time, d time.Duration) {
	t.Helper()
	select {
	case <-conn.Context().Done():
	case <-time.After(d):
		t.Fatalf("no stateless reset within %v (idle timeout 30s)", d)
	}
	var reset *quicgo.StatelessResetError
	if err := context.Cause(conn.Context()); !errors.As(err, &reset) {
		t.Errorf("connection ended with %v, want *quicgo.StatelessResetError", err)
	}
	t.Logf("reset noticed after %v", time.Since(start))
}

// TestKeepAliveAnsweredByStatelessReset: an idle connection, carrying nothing but the client's
// keep-alive PINGs, learns that the server crashed and restarted (same address, same key) from
// the stateless reset that answers its next keep-alive, long before its idle timeout. quic-go
// answers only packets over 42 bytes with a reset and a PING alone is ~25: the quic-go patch's
// change 12 pads it (third_party/README.md). agentd relies on this to notice a restarted kasd.
func TestKeepAliveAnsweredByStatelessReset(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	keyFile := t.TempDir() + "/reset.key"
	key, err := LoadOrCreateStatelessResetKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln1, err := ListenPacketConn(pc, serverTLS, Config{MaxIdleTimeout: 30 * time.Second, StatelessResetKey: key})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln1, echo)
	conn := dial(t, newDialer(t, clientTLS, Config{KeepAlivePeriod: 100 * time.Millisecond, MaxIdleTimeout: 30 * time.Second}), ln1.Addr().String())
	roundTrip(t, conn, []byte("before the crash"))
	// Past path MTU discovery, whose large probes a restarted server would reset too.
	time.Sleep(time.Second)

	pc.Close() // crash: the connections die without CONNECTION_CLOSE
	ln2, err := Listen(pc.LocalAddr().String(), serverTLS, Config{MaxIdleTimeout: 30 * time.Second, StatelessResetKey: key})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln2, echo)
	waitStatelessReset(t, conn, time.Now(), 3*time.Second) // keep-alives every 100ms
}

func roundTrip(t testing.TB, conn *quicgo.Conn, msg []byte) {
	t.Helper()
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sc := NewStreamConn(conn, s)
	defer sc.Close()
	if _, err := sc.Write(msg); err != nil {
		t.Fatal(err)
	}
	sc.CloseWrite()
	got, err := io.ReadAll(sc)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
}

// TestMaxIncomingStreams: with a limit of 2, a third stream waits for one to complete.
func TestMaxIncomingStreams(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{MaxIncomingStreams: 2})
	serve(t, ln, echo)
	conn := dial(t, newDialer(t, clientTLS, Config{}), ln.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var open []*StreamConn
	for range 2 {
		s, err := conn.OpenStreamSync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sc := NewStreamConn(conn, s)
		defer sc.Close()
		sc.Write([]byte("x"))
		open = append(open, sc)
	}
	if s, err := conn.OpenStream(); err == nil {
		t.Fatalf("third stream %d opened beyond the limit", s.StreamID())
	}
	third := make(chan error, 1)
	go func() {
		s, err := conn.OpenStreamSync(ctx)
		if err == nil {
			s.CancelWrite(0)
			s.CancelRead(0)
		}
		third <- err
	}()
	select {
	case err := <-third:
		t.Fatalf("third OpenStreamSync returned %v while 2 streams were open", err)
	case <-time.After(200 * time.Millisecond):
	}
	// Complete one stream: FIN from us, echo and FIN from the server, read to EOF.
	open[0].CloseWrite()
	if _, err := io.ReadAll(open[0]); err != nil {
		t.Fatal(err)
	}
	if err := <-third; err != nil {
		t.Fatalf("third OpenStreamSync after a stream completed: %v", err)
	}
}

func TestDialerSharesSocket(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	srv := serve(t, ln, echo)
	d := newDialer(t, clientTLS, Config{})
	// Dialer.Dial uses the first address a name resolves to; the server is on 127.0.0.1.
	if ips, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", "localhost"); err != nil || ips[0].Unmap().String() != "127.0.0.1" {
		t.Skipf("localhost resolves to %v, %v; want 127.0.0.1 first", ips, err)
	}
	c1 := dial(t, d, "localhost:"+portOf(t, ln.Addr()))
	c2 := dial(t, d, ln.Addr().String())
	if c1.LocalAddr().String() != c2.LocalAddr().String() {
		t.Errorf("LocalAddr %v != %v: dials did not share the socket", c1.LocalAddr(), c2.LocalAddr())
	}
	roundTrip(t, c1, []byte("one"))
	roundTrip(t, c2, []byte("two"))
	// The client config has no ServerName: the Dialer sent the host of the address as SNI.
	if sni := (<-srv.conns).ConnectionState().TLS.ServerName; sni != "localhost" {
		t.Errorf("server saw SNI %q, want localhost (from the dialed address)", sni)
	}
}

// With SocketPerConnection, each dial has a socket of its own (a source port of its own), closed
// when its connection ends; Close closes those still open; the Dialer reports the sockets'
// granted buffers before any connection.
func TestDialerSocketPerConnection(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, echo)
	d := newDialer(t, clientTLS, Config{SocketPerConnection: true})
	if b, err := d.SocketBuffers(); err != nil || b.Receive <= 0 || b.Send <= 0 {
		t.Errorf("SocketBuffers before any connection: %+v %v", b, err)
	}
	open := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.own)
	}
	c1 := dial(t, d, ln.Addr().String())
	c2 := dial(t, d, ln.Addr().String())
	if c1.LocalAddr().String() == c2.LocalAddr().String() {
		t.Errorf("both connections from %v: one socket", c1.LocalAddr())
	}
	roundTrip(t, c1, []byte("one"))
	roundTrip(t, c2, []byte("two"))
	if n := open(); n != 2 {
		t.Fatalf("%d sockets open, want 2", n)
	}
	if _, err := d.ReceiveDrops(); err != nil {
		t.Errorf("ReceiveDrops: %v", err)
	}
	c1.CloseWithError(ConnCodeNoError, "")
	deadline := time.Now().Add(5 * time.Second)
	for open() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sockets open after one connection closed, want 1", open())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A failed dial leaves no socket behind.
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := d.DialUDP(ctx, dead.LocalAddr().(*net.UDPAddr), "localhost"); err == nil {
		t.Fatal("dial to a silent port succeeded")
	}
	dead.Close()
	if n := open(); n != 1 {
		t.Errorf("%d sockets open after a failed dial, want 1", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := open(); n != 0 {
		t.Errorf("%d sockets open after Close", n)
	}
	if _, err := d.DialUDP(context.Background(), ln.Addr().(*net.UDPAddr), "localhost"); err == nil {
		t.Error("dial after Close succeeded")
	}
}

// TestDialOneShot: the one-shot Dial releases its socket when the connection ends (goleak in
// TestMain catches a transport left running).
func TestDialOneShot(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, echo)
	conn, err := Dial(context.Background(), ln.Addr().String(), clientTLS, Config{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, []byte("once"))
	conn.CloseWithError(ConnCodeNoError, "")
}

func portOf(t testing.TB, a net.Addr) string {
	_, port, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func TestCloseIdempotent(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln, err := Listen("127.0.0.1:0", serverTLS, Config{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDialer(clientTLS, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := ln.Close(); err != nil {
			t.Errorf("Listener.Close: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("Dialer.Close: %v", err)
		}
	}
	if _, err := ln.Accept(context.Background()); err == nil {
		t.Error("Accept after Close succeeded")
	}
	if _, err := d.Dial(context.Background(), "127.0.0.1:1"); err == nil {
		t.Error("Dial after Close succeeded")
	}
}

func BenchmarkStreamRoundTrip(b *testing.B) {
	serverTLS, clientTLS := testTLS(b)
	ln := listen(b, serverTLS, Config{})
	serve(b, ln, echo)
	conn := dial(b, newDialer(b, clientTLS, Config{}), ln.Addr().String())
	msg := bytes.Repeat([]byte("x"), 1024)
	buf := make([]byte, len(msg))
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		s, err := conn.OpenStreamSync(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		sc := NewStreamConn(conn, s)
		if _, err := sc.Write(msg); err != nil {
			b.Fatal(err)
		}
		sc.CloseWrite()
		if _, err := io.ReadFull(sc, buf); err != nil {
			b.Fatal(err)
		}
		sc.Close()
	}
}

// TestSlowStreamsDoNotStallOthers: streams whose data is not read (slow clients) must not use
// up the connection's flow-control window: another stream still gets its answer. With a 2 MiB
// connection window and 1 MiB per stream, two unread streams used to stall every other one.
func TestSlowStreamsDoNotStallOthers(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, func(sc *StreamConn) {
		defer sc.Close()
		var role [1]byte
		if _, err := io.ReadFull(sc, role[:]); err != nil {
			return
		}
		if role[0] == 'S' {
			// As much as the peer lets us send; blocks once its windows are full.
			sc.Write(make([]byte, 8<<20))
			return
		}
		sc.Write([]byte("pong"))
	})
	d := newDialer(t, clientTLS, Config{})
	conn := dial(t, d, ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 8 {
		s, err := conn.OpenStreamSync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer s.CancelRead(StreamCodeCanceled)
		s.Write([]byte("S")) // and never read
	}
	time.Sleep(500 * time.Millisecond) // the slow streams' data arrives and stays unread
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("F"))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "pong" {
		t.Fatalf("fast stream behind 8 unread ones: %q, %v", got, err)
	}
}

// TestStreamConnAnswered: a stream counts as answered once Read returned something from the
// peer — data, its FIN, or its reset — and not before, nor for a read that only timed out.
func TestStreamConnAnswered(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, func(sc *StreamConn) {
		b := make([]byte, 1)
		if _, err := io.ReadFull(sc, b); err != nil {
			return
		}
		switch b[0] {
		case 'd':
			_, _ = sc.Write([]byte("x"))
			_ = sc.CloseWrite()
			return
		case 'f':
			_ = sc.CloseWrite()
			return
		case 'r':
			sc.Abort(StreamCodeCanceled)
		}
	})
	conn := dial(t, newDialer(t, clientTLS, Config{}), ln.Addr().String())
	for _, what := range []string{"d", "f", "r"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := conn.OpenStreamSync(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		sc := NewStreamConn(conn, s)
		_ = sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := sc.Read(make([]byte, 1)); err == nil || sc.Answered() {
			t.Fatalf("%s: before the peer answered: read error %v, Answered %v", what, err, sc.Answered())
		}
		_ = sc.SetReadDeadline(time.Time{})
		if _, err := sc.Write([]byte(what)); err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(sc)
		if !sc.Answered() {
			t.Errorf("%s: the peer answered, Answered is false", what)
		}
		sc.Close()
	}
}
