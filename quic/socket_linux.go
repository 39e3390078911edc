//go:build linux

package quic

import (
	"fmt"
	"net"
	"os"

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

// SocketDrops returns how many datagrams the kernel dropped for c since it was opened: the
// drops column of /proc/net/udp{,6} for c's inode. quic-go owns the socket's reads, so
// SO_RXQ_OVFL (a count on every received datagram) is out of reach; this is read on demand
// (a metrics scrape) and costs one pass over the namespace's UDP sockets.
func SocketDrops(c *net.UDPConn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("quic: socket drops: %w", err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return 0, fmt.Errorf("quic: socket drops: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("quic: socket drops: fstat: %w", serr)
	}
	for _, name := range procNetUDPFiles {
		data, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		if n, ok := procNetUDPDrops(data, st.Ino); ok {
			return n, nil
		}
	}
	return 0, fmt.Errorf("quic: socket drops: inode %d not in %v", st.Ino, procNetUDPFiles)
}
