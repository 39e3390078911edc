//go:build linux

package rawio

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func listenUDP(t *testing.T, network, addr string) *UDP {
	t.Helper()
	c, err := net.ListenUDP(network, mustUDPAddr(t, network, addr))
	if err != nil {
		t.Skipf("no %s socket here: %v", network, err)
	}
	u := NewUDP(c)
	t.Cleanup(func() { _ = c.Close() })
	return u
}

func mustUDPAddr(t *testing.T, network, addr string) *net.UDPAddr {
	t.Helper()
	a, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func messages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1500)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

// readAll reads batches until want datagrams arrived.
func readAll(t *testing.T, u *UDP, want int) []ipv4.Message {
	t.Helper()
	var got []ipv4.Message
	_ = u.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < want {
		ms := messages(8)
		n, err := u.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(got), want, err)
		}
		got = append(got, ms[:n]...)
	}
	return got
}

func TestUDPSendAndBatchRead(t *testing.T) {
	rx := listenUDP(t, "udp4", "127.0.0.1:0")
	a := listenUDP(t, "udp4", "127.0.0.1:0")
	b := listenUDP(t, "udp4", "127.0.0.1:0")
	dst := rx.LocalAddr().(*net.UDPAddr)

	// Three from a, one from b, two from a again: each source address must be a's or b's, not
	// the previous datagram's (the receiver reuses the last address it decoded).
	order := []*UDP{a, a, a, b, a, a}
	for i, s := range order {
		payload := bytes.Repeat([]byte{byte('0' + i)}, 100+i)
		n, oobn, err := s.WriteMsgUDP(payload, nil, dst)
		if err != nil || n != len(payload) || oobn != 0 {
			t.Fatalf("send %d: n=%d oobn=%d err=%v", i, n, oobn, err)
		}
	}
	got := readAll(t, rx, len(order))
	for i, m := range got {
		want := bytes.Repeat([]byte{byte('0' + i)}, 100+i)
		if !bytes.Equal(m.Buffers[0][:m.N], want) {
			t.Errorf("datagram %d: %d bytes %q, want %d bytes", i, m.N, m.Buffers[0][:min(m.N, 8)], len(want))
		}
		from, ok := m.Addr.(*net.UDPAddr)
		src := order[i].LocalAddr().(*net.UDPAddr)
		if !ok || from.Port != src.Port || !from.IP.Equal(src.IP) {
			t.Errorf("datagram %d from %v, want %v", i, m.Addr, src)
		}
		if ok && len(from.IP) != net.IPv4len {
			t.Errorf("datagram %d: source IP of %d bytes from an AF_INET socket, want 4 (as x/net returns it)", i, len(from.IP))
		}
	}
}

// A dual-stack IPv6 socket sends to IPv4 peers as IPv4-mapped addresses and reports them so.
func TestUDPDualStack(t *testing.T) {
	v6 := listenUDP(t, "udp", "[::]:0")
	v4 := listenUDP(t, "udp4", "127.0.0.1:0")
	port := v6.LocalAddr().(*net.UDPAddr).Port

	if _, _, err := v4.WriteMsgUDP([]byte("ping"), nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, v6, 1)
	from := got[0].Addr.(*net.UDPAddr)
	if len(from.IP) != net.IPv6len || !from.IP.Equal(net.IPv4(127, 0, 0, 1)) || from.Port != v4.LocalAddr().(*net.UDPAddr).Port {
		t.Fatalf("from %v (%d-byte IP), want the IPv4-mapped form of %v", from, len(from.IP), v4.LocalAddr())
	}
	// Reply to the address as received, and to its 4-byte form.
	for _, to := range []*net.UDPAddr{from, {IP: from.IP.To4(), Port: from.Port}} {
		if _, _, err := v6.WriteMsgUDP([]byte("pong"), nil, to); err != nil {
			t.Fatalf("send to %v: %v", to, err)
		}
	}
	for _, m := range readAll(t, v4, 2) {
		if string(m.Buffers[0][:m.N]) != "pong" {
			t.Fatalf("got %q", m.Buffers[0][:m.N])
		}
	}
}

// Control messages travel both ways: an ECN codepoint set with IP_TOS on the send arrives as
// an IP_TOS control message (quic-go reads ECN this way).
func TestUDPControlMessages(t *testing.T) {
	rx := listenUDP(t, "udp4", "127.0.0.1:0")
	tx := listenUDP(t, "udp4", "127.0.0.1:0")
	rc, err := rx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	oob := make([]byte, unix.CmsgSpace(1))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	oob[unix.CmsgSpace(0)] = 0b10 // ECT(0)
	if _, oobn, err := tx.WriteMsgUDP([]byte("ecn"), oob, rx.LocalAddr().(*net.UDPAddr)); err != nil || oobn != len(oob) {
		t.Fatalf("oobn=%d err=%v", oobn, err)
	}
	m := readAll(t, rx, 1)[0]
	msgs, err := unix.ParseSocketControlMessage(m.OOB[:m.NN])
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range msgs {
		if cm.Header.Level == unix.IPPROTO_IP && cm.Header.Type == unix.IP_TOS {
			if cm.Data[0]&0b11 != 0b10 {
				t.Fatalf("TOS %#x, want ECT(0)", cm.Data[0])
			}
			return
		}
	}
	t.Fatalf("no IP_TOS control message among %d bytes", m.NN)
}

// Errors have net's shape: quic-go reads EMSGSIZE (path MTU), EIO (GSO) and EPERM from an
// *os.SyscallError inside a *net.OpError, and a deadline or Close from a net.Error.
func TestUDPErrors(t *testing.T) {
	u := listenUDP(t, "udp4", "127.0.0.1:0")
	_, _, err := u.WriteMsgUDP(make([]byte, 70000), nil, u.LocalAddr().(*net.UDPAddr))
	var se *os.SyscallError
	var oe *net.OpError
	if !errors.Is(err, syscall.EMSGSIZE) || !errors.As(err, &se) || se.Syscall != "sendmsg" || !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("oversized datagram: %#v, want a write *net.OpError wrapping sendmsg's EMSGSIZE", err)
	}

	_ = u.SetReadDeadline(time.Now().Add(-time.Second))
	_, err = u.ReadBatch(messages(2), 0)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}

	_ = u.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := u.ReadBatch(messages(2), 0)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the read wait in the poller
	_ = u.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read across Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a read waiting for data did not return when the socket closed")
	}
	if _, _, err := u.WriteMsgUDP([]byte("x"), nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after Close: %v, want net.ErrClosed", err)
	}
}

// Sends from many goroutines at once each arrive whole (the pooled send arguments are not shared).
func TestUDPConcurrentSends(t *testing.T) {
	rx := listenUDP(t, "udp4", "127.0.0.1:0")
	tx := listenUDP(t, "udp4", "127.0.0.1:0")
	const senders, each = 8, 25
	var wg sync.WaitGroup
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				p := bytes.Repeat([]byte{byte(g)}, 10+i)
				if _, _, err := tx.WriteMsgUDP(p, nil, rx.LocalAddr().(*net.UDPAddr)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, m := range readAll(t, rx, senders*each) {
		p := m.Buffers[0][:m.N]
		if !bytes.Equal(p, bytes.Repeat(p[:1], len(p))) {
			t.Fatalf("datagram mixes senders: %v", p)
		}
	}
}

func tcpPair(t *testing.T) (server net.Conn, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	server = Conn(s)
	t.Cleanup(func() { _ = server.Close(); _ = c.Close() })
	return server, c.(*net.TCPConn)
}

// A write larger than the socket buffers waits for the reader and delivers every byte in order,
// while reads on the same connection go on; the end of the peer's stream reads as io.EOF.
func TestConnReadWrite(t *testing.T) {
	s, c := tcpPair(t)
	if _, ok := s.(*tcpConn); !ok {
		t.Fatalf("Conn of a TCP connection is %T", s)
	}
	big := make([]byte, 16<<20) // more than loopback's socket buffers hold: the write waits for room
	for i := range big {
		big[i] = byte(i * 7)
	}
	want := sha256.Sum256(big)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the server writes 16 MiB while reading the client's bytes
		defer wg.Done()
		if n, err := s.Write(big); n != len(big) || err != nil {
			t.Errorf("Write: %d of %d, %v", n, len(big), err)
		}
	}()
	var fromClient []byte
	go func() {
		defer wg.Done()
		var err error
		fromClient, err = io.ReadAll(s)
		if err != nil {
			t.Errorf("ReadAll: %v", err)
		}
	}()
	if _, err := c.Write([]byte("hello from the client")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	h := sha256.New()
	if _, err := io.CopyN(h, c, int64(len(big))); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Fatal("the 16 MiB arrived corrupted")
	}
	if string(fromClient) != "hello from the client" {
		t.Fatalf("server read %q", fromClient)
	}
}

func TestConnDeadlineAndClose(t *testing.T) {
	s, _ := tcpPair(t)
	_ = s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := s.Read(make([]byte, 10))
	var ne net.Error
	var oe *net.OpError
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read past the deadline: %#v, want a read *net.OpError that times out", err)
	}
	_ = s.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read across Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting read did not return on Close")
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	if n, err := s.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v (net returns 0, nil)", n, err)
	}
}

// A write to a peer that reset the connection fails with the errno inside net's error shape.
func TestConnWriteToResetPeer(t *testing.T) {
	s, c := tcpPair(t)
	_ = c.SetLinger(0)
	_ = c.Close() // RST
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = s.Write(make([]byte, 64<<10))
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "write" || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		t.Fatalf("write to a reset peer: %v, want write's ECONNRESET or EPIPE", err)
	}
}

func TestConnLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Conn(a) != a {
		t.Fatal("a non-TCP connection was wrapped")
	}
}
