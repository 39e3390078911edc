//go:build linux

package quic

import (
	"fmt"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	receiveOpts = bufferOpts{size: unix.SO_RCVBUF, force: unix.SO_RCVBUFFORCE}
	sendOpts    = bufferOpts{size: unix.SO_SNDBUF, force: unix.SO_SNDBUFFORCE}
)

// usable turns getsockopt's SO_RCVBUF/SO_SNDBUF into the size that was asked for: Linux
// doubles the requested value to leave room for its own bookkeeping and reports the double.
func usable(reported int) int { return reported / 2 }

func setsockoptInt(fd uintptr, opt, v int) error {
	return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, v)
}

func getsockoptInt(fd uintptr, opt int) (int, error) {
	return unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt)
}

// procNetUDPFiles are read in turn: an IPv4 socket is in the first, an IPv6 (or dual-stack)
// one in the second. Both list the sockets of this process's network namespace.
var procNetUDPFiles = []string{"/proc/net/udp", "/proc/net/udp6"}

// SocketDrops returns how many datagrams the kernel dropped for c since it was opened. It asks
// the socket itself (getsockopt SO_MEMINFO, whose SK_MEMINFO_DROPS is the sk_drops counter
// /proc/net/udp prints: Linux 4.16 and later), and only where the kernel does not report it
// falls back to the drops column of /proc/net/udp{,6} for c's inode. The file is the kernel's
// walk over every UDP socket of the host, other network namespaces' included: with a fleet of
// 50,000 agents' sockets on the same host it cost ~8 ms of CPU per metrics scrape
// (docs/scale.md), SO_MEMINFO one system call. quic-go owns the socket's reads, so SO_RXQ_OVFL (a
// count on every received datagram) is out of reach.
func SocketDrops(c *net.UDPConn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("quic: socket drops: %w", err)
	}
	var drops uint64
	var ok bool
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if drops, ok = meminfoDrops(fd); !ok {
			serr = unix.Fstat(int(fd), &st)
		}
	}); err != nil {
		return 0, fmt.Errorf("quic: socket drops: %w", err)
	}
	if ok {
		return drops, nil
	}
	if serr != nil {
		return 0, fmt.Errorf("quic: socket drops: fstat: %w", serr)
	}
	return procSocketDrops(st.Ino)
}

// skMeminfoDrops is SK_MEMINFO_DROPS, the index of the drop count in SO_MEMINFO's array of
// uint32 (include/uapi/linux/sock_diag.h); the array has skMeminfoDrops+1 entries or more on
// kernels that report it.
const skMeminfoDrops = 8

// meminfoDrops reads fd's drop count through SO_MEMINFO; false when the kernel's answer does
// not include it.
func meminfoDrops(fd uintptr) (uint64, bool) {
	var info [16]uint32 // room for fields later kernels may add
	n := uint32(len(info) * 4)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 || n < (skMeminfoDrops+1)*4 {
		return 0, false
	}
	return uint64(info[skMeminfoDrops]), true
}

// procSocketDrops is the drops column of /proc/net/udp{,6} for the socket with inode.
func procSocketDrops(inode uint64) (uint64, error) {
	for _, name := range procNetUDPFiles {
		data, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		if n, ok := procNetUDPDrops(data, inode); ok {
			return n, nil
		}
	}
	return 0, fmt.Errorf("quic: socket drops: inode %d not in %v", inode, procNetUDPFiles)
}
