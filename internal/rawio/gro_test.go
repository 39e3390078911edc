//go:build linux

package rawio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// gsoControl is the control message of a GSO send (UDP_SEGMENT) with datagrams of size seg,
// followed by an IP_TOS one carrying tos when tos != 0.
func gsoControl(seg uint16, tos byte) []byte {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgSpace(0):], seg)
	if tos != 0 {
		t := make([]byte, unix.CmsgSpace(1))
		th := (*unix.Cmsghdr)(unsafe.Pointer(&t[0]))
		th.Level, th.Type = unix.IPPROTO_IP, unix.IP_TOS
		th.SetLen(unix.CmsgLen(1))
		t[unix.CmsgSpace(0)] = tos
		oob = append(oob, t...)
	}
	return oob
}

// datagram i of a batch: its index, then a filler that differs from its neighbours'.
func datagram(i, size int) []byte {
	b := bytes.Repeat([]byte{byte('a' + i%26)}, size)
	binary.BigEndian.PutUint16(b, uint16(i))
	return b
}

// groPair returns a receiver with GRO on and a sender, on loopback; it skips where the kernel
// has no UDP_GRO.
func groPair(t *testing.T) (rx, tx *UDP) {
	t.Helper()
	rx = listenUDP(t, "udp4", "127.0.0.1:0")
	tx = listenUDP(t, "udp4", "127.0.0.1:0")
	if !rx.EnableGRO() {
		t.Skip("UDP_GRO refused by this kernel")
	}
	return rx, tx
}

func enableTOS(t *testing.T, u *UDP) {
	t.Helper()
	var serr error
	if err := u.rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
}

func tosOf(t *testing.T, m ipv4.Message) (tos byte, gro bool) {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(m.OOB[:m.NN])
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range msgs {
		switch {
		case cm.Header.Level == unix.IPPROTO_IP && cm.Header.Type == unix.IP_TOS:
			tos = cm.Data[0]
		case cm.Header.Level == unix.IPPROTO_UDP && cm.Header.Type == unix.UDP_GRO:
			gro = true
		}
	}
	return tos, gro
}

// A GSO batch sent over loopback reaches a GRO socket as one buffer: ReadBatch hands it out as
// the datagrams that were sent, in order and intact (the last one shorter), each with the
// batch's source address and control messages (ECN) but not the UDP_GRO one, across as many
// calls as the caller's batch needs; a plain datagram between two batches keeps its place.
func TestGROSplitsCoalescedDatagrams(t *testing.T) {
	rx, tx := groPair(t)
	if !rx.GRO() {
		t.Fatal("GRO() false after EnableGRO succeeded")
	}
	enableTOS(t, rx)
	dst := rx.LocalAddr().(*net.UDPAddr)

	const seg, count = 1200, 11
	var batch []byte
	var want [][]byte
	for i := range count {
		size := seg
		if i == count-1 {
			size = 333
		}
		d := datagram(i, size)
		want = append(want, d)
		batch = append(batch, d...)
	}
	if _, _, err := tx.WriteMsgUDP(batch, gsoControl(seg, 0b10), dst); err != nil {
		t.Skipf("GSO send refused here: %v", err)
	}
	lone := datagram(99, 77)
	want = append(want, lone)
	if _, _, err := tx.WriteMsgUDP(lone, nil, dst); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // a second batch, of 3
		d := datagram(100+i, seg)
		want = append(want, d)
	}
	if _, _, err := tx.WriteMsgUDP(bytes.Join(want[len(want)-3:], nil), gsoControl(seg, 0b10), dst); err != nil {
		t.Fatal(err)
	}

	// Read with batches of 4: the 11-datagram buffer takes three calls.
	_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []ipv4.Message
	calls := 0
	for len(got) < len(want) {
		ms := messages(4)
		n, err := rx.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(got), len(want), err)
		}
		calls++
		got = append(got, ms[:n]...)
	}
	if len(got) != len(want) {
		t.Fatalf("%d datagrams, want %d", len(got), len(want))
	}
	src := tx.LocalAddr().(*net.UDPAddr)
	for i, m := range got {
		if !bytes.Equal(m.Buffers[0][:m.N], want[i]) {
			t.Errorf("datagram %d: %d bytes starting %x, want %d bytes starting %x", i, m.N, m.Buffers[0][:min(m.N, 2)], len(want[i]), want[i][:2])
		}
		if from, ok := m.Addr.(*net.UDPAddr); !ok || from.Port != src.Port {
			t.Errorf("datagram %d from %v, want %v", i, m.Addr, src)
		}
		if m.Flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			t.Errorf("datagram %d: flags %#x", i, m.Flags)
		}
		tos, gro := tosOf(t, m)
		if gro {
			t.Errorf("datagram %d: the UDP_GRO control message reached the caller", i)
		}
		if i != count && tos&0b11 != 0b10 {
			t.Errorf("datagram %d: TOS %#x, want ECT(0) as sent", i, tos)
		}
	}
	// Coalesced: 11 + 1 + 3 datagrams in batches of 4 take at least 4 calls; had the kernel
	// delivered them one by one they would too, so look at what the first read held.
	if calls < 4 {
		t.Errorf("%d calls for %d datagrams in batches of 4", calls, len(want))
	}
	if rx.recv.gro.chunk != nil {
		t.Error("the chunk is still held after everything was handed out")
	}
}

// The kernel really coalesces (else the test above proves only the plain path): with GRO on,
// one recvmmsg of a GSO batch returns one buffer with a UDP_GRO control message.
func TestGROKernelCoalesces(t *testing.T) {
	rx, tx := groPair(t)
	batch := append(datagram(0, 1000), datagram(1, 1000)...)
	if _, _, err := tx.WriteMsgUDP(batch, gsoControl(1000, 0), rx.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Skipf("GSO send refused here: %v", err)
	}
	_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	ms := messages(1)
	if _, err := rx.ReadBatch(ms, 0); err != nil {
		t.Fatal(err)
	}
	g := &rx.recv.gro
	if g.n != 1 || g.pend[0].seg != 1000 || len(g.pend[0].data) != 1000 || g.chunk == nil {
		t.Fatalf("after the first datagram: %d pending reads, seg %d, %d bytes left, chunk held %v; want 1, 1000, 1000, true",
			g.n, g.pend[0].seg, len(g.pend[0].data), g.chunk != nil)
	}
	if _, err := rx.ReadBatch(ms, 0); err != nil {
		t.Fatal(err)
	}
	if g.chunk != nil || g.n != 0 {
		t.Fatal("chunk still held after the batch was handed out")
	}
}

// A datagram larger than the caller's buffer is cut as the kernel would cut it (MSG_TRUNC),
// and an empty datagram is handed out as one empty message.
func TestGROTruncatesAndKeepsEmptyDatagrams(t *testing.T) {
	rx, tx := groPair(t)
	dst := rx.LocalAddr().(*net.UDPAddr)
	big := datagram(7, 3000)
	for _, p := range [][]byte{big, {}, []byte("after")} {
		if _, _, err := tx.WriteMsgUDP(p, nil, dst); err != nil {
			t.Fatal(err)
		}
	}
	got := readAll(t, rx, 3)
	if got[0].N != 1500 || got[0].Flags&unix.MSG_TRUNC == 0 || !bytes.Equal(got[0].Buffers[0][:1500], big[:1500]) {
		t.Errorf("3000-byte datagram into 1500 bytes: N=%d flags=%#x", got[0].N, got[0].Flags)
	}
	if got[1].N != 0 {
		t.Errorf("empty datagram: N=%d", got[1].N)
	}
	if string(got[2].Buffers[0][:got[2].N]) != "after" {
		t.Errorf("third datagram %q", got[2].Buffers[0][:got[2].N])
	}
}

// A socket waiting for data holds no chunk: thousands of idle sockets cost nothing.
func TestGROIdleSocketHoldsNoChunk(t *testing.T) {
	rx := listenUDP(t, "udp4", "127.0.0.1:0")
	if !rx.EnableGRO() {
		t.Skip("UDP_GRO refused by this kernel")
	}
	_ = rx.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := rx.ReadBatch(messages(8), 0); err == nil {
		t.Fatal("read without data")
	}
	if rx.recv.gro.chunk != nil {
		t.Fatal("chunk held by a socket with nothing to read")
	}
}

func TestSplitGROControl(t *testing.T) {
	gro := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&gro[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(gro[unix.CmsgSpace(0):], 1452)
	tos := gsoControl(1, 0b01)[unix.CmsgSpace(2):] // the IP_TOS part
	for _, tc := range []struct {
		oob     []byte
		rest    []byte
		seg     int
		comment string
	}{
		{nil, nil, 0, "none"},
		{append(append([]byte{}, tos...), gro...), tos, 1452, "TOS then GRO"},
		{append(append([]byte{}, gro...), tos...), tos, 1452, "GRO then TOS"},
		{append([]byte{}, tos...), tos, 0, "TOS only"},
		{[]byte{1, 2, 3}, nil, 0, "garbage"},
	} {
		rest, seg := splitGROControl(tc.oob)
		if seg != tc.seg || !bytes.Equal(rest, tc.rest) {
			t.Errorf("%s: rest %x seg %d, want %x %d", tc.comment, rest, seg, tc.rest, tc.seg)
		}
	}
}

func FuzzSplitGROControl(f *testing.F) {
	f.Add(gsoControl(1200, 0b10))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		rest, seg := splitGROControl(append([]byte{}, oob...))
		if len(rest) > len(oob) || seg < 0 {
			t.Fatalf("rest %d of %d bytes, seg %d", len(rest), len(oob), seg)
		}
		// What is left holds no UDP_GRO message: splitting it again changes nothing.
		again, seg2 := splitGROControl(append([]byte{}, rest...))
		if seg2 != 0 || !bytes.Equal(again, rest) {
			t.Fatalf("second split: seg %d, %d of %d bytes", seg2, len(again), len(rest))
		}
	})
}

// GRO() answers while another goroutine waits in ReadBatch (kasd reports it at start, with
// quic-go's reader already waiting: it once took the reader's lock and kasd never got ready).
func TestGROReportDoesNotWaitForAReader(t *testing.T) {
	rx := listenUDP(t, "udp4", "127.0.0.1:0")
	on := rx.EnableGRO()
	done := make(chan error, 1)
	go func() {
		_, err := rx.ReadBatch(messages(8), 0)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the reader park
	answered := make(chan bool, 1)
	go func() { answered <- rx.GRO() }()
	select {
	case got := <-answered:
		if got != on {
			t.Errorf("GRO() = %v, EnableGRO said %v", got, on)
		}
	case <-time.After(2 * time.Second):
		t.Error("GRO() blocked behind a waiting reader")
	}
	_ = rx.Close()
	<-done
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
	}
}

// One small datagram per read, the idle keep-alive case: what GRO's chunk costs a read that
// has nothing to coalesce.
func BenchmarkReadSmallDatagram(b *testing.B) {
	for _, gro := range []bool{false, true} {
		b.Run(fmt.Sprintf("gro=%v", gro), func(b *testing.B) {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			rx := NewUDP(c)
			if gro && !rx.EnableGRO() {
				b.Skip("no UDP_GRO")
			}
			tc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer tc.Close()
			tx := NewUDP(tc)
			dst := c.LocalAddr().(*net.UDPAddr)
			ms := messages(8)
			p := make([]byte, 60)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := tx.WriteMsgUDP(p, nil, dst); err != nil {
					b.Fatal(err)
				}
				if n, err := rx.ReadBatch(ms, 0); err != nil || n != 1 {
					b.Fatal(n, err)
				}
			}
		})
	}
}
