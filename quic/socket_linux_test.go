//go:build linux

package quic

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSocketDropsMeminfoAgreesWithProc: the drop count SocketDrops reads from the socket
// (SO_MEMINFO) is the one /proc/net/udp prints for it, before and after the kernel dropped
// datagrams sent into a full receive buffer nobody reads.
func TestSocketDropsMeminfoAgreesWithProc(t *testing.T) {
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := rx.SetReadBuffer(1); err != nil {
		t.Fatal(err)
	}
	rc, err := rx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	both := func() (meminfo uint64, proc uint64) {
		t.Helper()
		var ok bool
		var st unix.Stat_t
		if err := rc.Control(func(fd uintptr) {
			meminfo, ok = meminfoDrops(fd)
			if err := unix.Fstat(int(fd), &st); err != nil {
				t.Fatal(err)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Skip("this kernel reports no SK_MEMINFO_DROPS")
		}
		proc, err := procSocketDrops(st.Ino)
		if err != nil {
			t.Fatal(err)
		}
		return meminfo, proc
	}
	if m, p := both(); m != 0 || p != 0 {
		t.Fatalf("a new socket: SO_MEMINFO drops %d, /proc/net/udp %d; want 0 and 0", m, p)
	}
	tx, err := net.DialUDP("udp", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	payload := bytes.Repeat([]byte{'x'}, 1200)
	for range 200 {
		_, _ = tx.Write(payload)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		m, p := both()
		if m >= 100 && m == p {
			got, err := SocketDrops(rx)
			if err != nil || got != m {
				t.Fatalf("SocketDrops = %d, %v; want %d", got, err, m)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 200 datagrams into a full buffer: SO_MEMINFO drops %d, /proc/net/udp %d", m, p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
