package quic

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

func TestTCPFrameRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 1200, 1452, MaxTCPPacket} {
		p := bytes.Repeat([]byte{byte(n)}, n)
		b := AppendTCPFrame(nil, p)
		buf := make([]byte, MaxTCPPacket)
		got, err := ReadTCPFrame(bytes.NewReader(b), buf)
		if err != nil || !bytes.Equal(buf[:got], p) {
			t.Errorf("%d bytes: got %d, %v", n, got, err)
		}
	}
	bad := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", []byte{0, 0}, ErrTCPFrameLength},
		{"too long", []byte{0x06, 0x41}, ErrTCPFrameLength}, // 1601
		{"max uint16", []byte{0xff, 0xff, 1, 2}, ErrTCPFrameLength},
		{"short header", []byte{0}, io.ErrUnexpectedEOF},
		{"short body", []byte{0, 3, 1}, io.ErrUnexpectedEOF},
		{"nothing", nil, io.EOF},
	}
	for _, c := range bad {
		if _, err := ReadTCPFrame(bytes.NewReader(c.in), make([]byte, MaxTCPPacket)); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	if err := ReadTCPPreamble(bytes.NewReader(AppendTCPPreamble(nil))); err != nil {
		t.Errorf("preamble: %v", err)
	}
	other := AppendTCPPreamble(nil)
	other[len(other)-1] = 2 // a version we do not speak
	for _, in := range [][]byte{other, []byte("GET / HTTP/1.1\r\n")} {
		if err := ReadTCPPreamble(bytes.NewReader(in)); !errors.Is(err, ErrTCPPreamble) {
			t.Errorf("preamble %q: err = %v, want ErrTCPPreamble", in, err)
		}
	}
}

// FuzzTCPFrame feeds arbitrary streams to the preamble and frame parsers: they never panic,
// never return a packet longer than MaxTCPPacket, and what they parse re-encodes to the input.
func FuzzTCPFrame(f *testing.F) {
	f.Add(AppendTCPFrame(AppendTCPPreamble(nil), []byte("hello")))
	f.Add(AppendTCPFrame(AppendTCPFrame(AppendTCPPreamble(nil), bytes.Repeat([]byte{1}, 1452)), []byte{2}))
	f.Add([]byte("QKAS/TCP\x01\x00\x00"))
	f.Add([]byte("QKAS/TCP\x02"))
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		if ReadTCPPreamble(r) != nil {
			return
		}
		var re []byte
		buf := make([]byte, MaxTCPPacket)
		for {
			n, err := ReadTCPFrame(r, buf)
			if err != nil {
				break
			}
			if n < 1 || n > MaxTCPPacket {
				t.Fatalf("packet of %d bytes", n)
			}
			re = AppendTCPFrame(re, buf[:n])
		}
		if !bytes.HasPrefix(in[len(tcpPreamble):], re) {
			t.Fatalf("re-encoded frames are not a prefix of the input")
		}
	})
}

// tcpPair starts a TCPListener on loopback serving echo streams and returns a TCPDialer
// whose connections reach it.
func tcpPair(t *testing.T, cfg Config) (*TCPListener, *TCPDialer, *tls.Config) {
	t.Helper()
	srvTLS, cliTLS := testTLS(t)
	ln, err := ListenTCP("127.0.0.1:0", srvTLS, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			qc, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				for {
					st, err := qc.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() {
						_, _ = io.Copy(st, st)
						_ = st.Close()
					})
				}
			})
		}
	})
	d, err := NewTCPDialer(cliTLS, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return ln, d, cliTLS
}

func tcpEcho(t *testing.T, qc *quicgo.Conn, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Error(err)
		return
	}
	_ = st.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(payload)
		if err == nil {
			err = st.Close()
		}
		errc <- err
	}()
	got, err := io.ReadAll(st)
	if werr := <-errc; werr != nil {
		err = werr
	}
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("echo of %d bytes: got %d bytes, %v", len(payload), len(got), err)
	}
}

// QUIC over TCP works like QUIC over UDP: many connections, many streams each, large bodies,
// and the connection's remote address says it is TCP.
func TestTCPManyConns(t *testing.T) {
	// Generous timeouts: under -race on a shared machine 8 handshakes at once are slow.
	ln, d, _ := tcpPair(t, Config{HandshakeTimeout: 20 * time.Second, MaxIdleTimeout: 30 * time.Second})
	addr := ln.Addr().(*net.TCPAddr)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			qc, err := d.Dial(ctx, addr, "localhost", nil)
			if err != nil {
				t.Error(err)
				return
			}
			defer qc.CloseWithError(ConnCodeNoError, "")
			if TransportOf(qc.RemoteAddr()) != "tcp" {
				t.Errorf("TransportOf(%T) = %q", qc.RemoteAddr(), TransportOf(qc.RemoteAddr()))
			}
			var sw sync.WaitGroup
			for j := range 3 {
				sw.Go(func() { tcpEcho(t, qc, bytes.Repeat([]byte{byte(i), byte(j)}, 20_000+i*1000)) })
			}
			sw.Wait()
		})
	}
	wg.Wait()
	if n := ln.Conns(); n > 8 {
		t.Errorf("listener holds %d TCP connections, want at most 8", n)
	}
}

// Closing the QUIC connection closes its TCP connection on both sides; killing the TCP
// connection ends the QUIC connection at once, not at its idle timeout.
func TestTCPConnEndsTogether(t *testing.T) {
	ln, d, _ := tcpPair(t, Config{MaxIdleTimeout: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := d.Dial(ctx, ln.Addr().(*net.TCPAddr), "localhost", nil)
	if err != nil {
		t.Fatal(err)
	}
	tcpEcho(t, qc, []byte("x"))
	_ = qc.CloseWithError(ConnCodeNoError, "bye")
	waitFor(t, "listener's TCP connections to reach 0", func() bool { return ln.Conns() == 0 })

	// Cut the TCP connection under a live QUIC connection: the dialer's side ends at once.
	var raw net.Conn
	dial := func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "tcp", ln.Addr().String())
		raw = c
		return c, err
	}
	qc, err = d.Dial(ctx, ln.Addr().(*net.TCPAddr), "localhost", dial)
	if err != nil {
		t.Fatal(err)
	}
	tcpEcho(t, qc, []byte("y"))
	start := time.Now()
	raw.Close()
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("QUIC connection still open 5s after its TCP connection was cut")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("QUIC connection ended %v after its TCP connection, want at once", el)
	}
	waitFor(t, "listener's TCP connections to reach 0", func() bool { return ln.Conns() == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawPeer opens a TLS connection to the mux with ALPN TCPALPN and sends the preamble.
func rawPeer(t *testing.T, addr net.Addr, cli *tls.Config) *tls.Conn {
	t.Helper()
	conf := cli.Clone()
	conf.NextProtos = []string{TCPALPN}
	conf.ServerName = "localhost"
	c, err := tls.Dial("tcp", addr.String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.NetConn().Close() })
	if _, err := c.Write(AppendTCPPreamble(nil)); err != nil {
		t.Fatal(err)
	}
	return c
}

// A peer that stops reading does not hold up the packets of the others: WriteTo never blocks,
// and packets beyond its queue are dropped and counted.
func TestTCPMuxSlowPeer(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	outer := srvTLS.Clone()
	outer.NextProtos = []string{TCPALPN}
	m := newTCPMux(tcpLn, outer, 5*time.Second, 30*time.Second, 10)
	m.start()
	defer m.Close()

	slow := rawPeer(t, tcpLn.Addr(), cliTLS)
	fast := rawPeer(t, tcpLn.Addr(), cliTLS)
	addrOf := map[string]net.Addr{}
	for name, c := range map[string]*tls.Conn{"slow": slow, "fast": fast} {
		if _, err := c.Write(AppendTCPFrame(nil, []byte(name))); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, MaxTCPPacket)
	for range 2 {
		_ = m.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := m.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		addrOf[string(buf[:n])] = from
	}
	_ = m.SetReadDeadline(time.Time{})
	if _, ok := addrOf["slow"].(*net.TCPAddr); !ok {
		t.Fatalf("ReadFrom's address is %T, want *net.TCPAddr", addrOf["slow"])
	}

	// 20 MB to the peer that never reads: far beyond its socket buffers and queue.
	pkt := bytes.Repeat([]byte{7}, 1400)
	wrote := make(chan error, 1)
	go func() {
		for range 15000 {
			if _, err := m.WriteTo(pkt, addrOf["slow"]); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		// A blocking WriteTo would wait here for ever once the socket buffers are full.
		t.Fatal("WriteTo blocked on a peer that does not read")
	}
	if m.rejections[indexOf("send_queue_full")].Load() == 0 {
		t.Error("no packet to the stuck peer was counted as send_queue_full")
	}
	// The fast peer still gets its packets promptly.
	for i := range 100 {
		if _, err := m.WriteTo([]byte{byte(i), 1, 2, 3}, addrOf["fast"]); err != nil {
			t.Fatal(err)
		}
	}
	_ = fast.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := range 100 {
		n, err := ReadTCPFrame(fast, buf)
		if err != nil || n != 4 || buf[0] != byte(i) {
			t.Fatalf("fast peer, packet %d: %d bytes %v, %v", i, n, buf[:n], err)
		}
	}
}

func indexOf(reason string) int {
	for i, r := range tcpReasons {
		if r == reason {
			return i
		}
	}
	panic(reason)
}

// Anything but the preamble and well-formed frames closes the connection and is counted.
func TestTCPListenerRefusesGarbage(t *testing.T) {
	ln, _, cliTLS := tcpPair(t, Config{HandshakeTimeout: time.Second})
	expectClosed := func(c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 64)); err == nil || isTimeoutErr(err) {
			t.Errorf("connection not closed by the listener: %v", err)
		}
	}
	count := func(reason string) uint64 { return ln.Rejections()[reason] }

	// Not TLS at all.
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = raw.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	expectClosed(raw)
	waitFor(t, "tls_handshake counted", func() bool { return count("tls_handshake") == 1 })

	// TLS with the right ALPN, then an HTTP request instead of the preamble.
	conf := cliTLS.Clone()
	conf.NextProtos = []string{TCPALPN}
	conf.ServerName = "localhost"
	c, err := tls.Dial("tcp", ln.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	expectClosed(c)
	waitFor(t, "preamble counted", func() bool { return count("preamble") == 1 })

	// The preamble, then a frame longer than MaxTCPPacket.
	c2 := rawPeer(t, ln.Addr(), cliTLS)
	_, _ = c2.Write([]byte{0x7f, 0xff})
	expectClosed(c2)
	waitFor(t, "frame_length counted", func() bool { return count("frame_length") == 1 })

	// Silence after TLS: closed after the handshake timeout.
	c3, err := tls.Dial("tcp", ln.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	expectClosed(c3)
	waitFor(t, "handshake_timeout counted", func() bool { return count("handshake_timeout") == 1 })

	// A TLS client that does not offer the ALPN.
	noALPN := cliTLS.Clone()
	noALPN.NextProtos = []string{"h2"}
	noALPN.ServerName = "localhost"
	if c4, err := tls.Dial("tcp", ln.Addr().String(), noALPN); err == nil {
		expectClosed(c4)
		c4.Close()
	}
	waitFor(t, "alpn or tls_handshake counted", func() bool { return count("alpn")+count("tls_handshake") >= 2 })
	waitFor(t, "all refused connections released", func() bool { return ln.Conns() == 0 })
}
