//go:build linux

package rawio

import (
	"bytes"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// UDP is a *net.UDPConn whose WriteMsgUDP and ReadBatch are one raw sendmsg and one raw
// recvmmsg. Everything else is the *net.UDPConn's. Safe for concurrent use.
type UDP struct {
	*net.UDPConn
	rc     syscall.RawConn
	family uint16 // AF_INET or AF_INET6: how a destination is encoded

	senders sync.Pool // *udpSender

	gro      atomic.Bool // EnableGRO succeeded: ReadBatch reads coalesced datagrams (gro_linux.go)
	rmu      sync.Mutex
	recv     udpReceiver
	fallback *ipv4.PacketConn // for batches this file does not lay out (more than one buffer)
}

// NewUDP wraps c. If the socket cannot be inspected, sends and reads go through net.
func NewUDP(c *net.UDPConn) *UDP {
	u := &UDP{UDPConn: c, fallback: ipv4.NewPacketConn(c)}
	rc, err := c.SyscallConn()
	if err != nil {
		return u
	}
	var domain int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil || serr != nil || (domain != unix.AF_INET && domain != unix.AF_INET6) {
		return u
	}
	u.rc, u.family = rc, uint16(domain)
	u.senders.New = func() any {
		s := &udpSender{}
		s.fn = s.call
		return s
	}
	u.recv.fn = u.recv.call
	u.recv.groFn = u.recv.groCall
	return u
}

// udpSender is one sendmsg's arguments, pooled so that a send allocates nothing.
type udpSender struct {
	msg   unix.Msghdr
	iov   unix.Iovec
	sa    unix.RawSockaddrInet6 // an AF_INET destination uses its first 16 bytes
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // s.call, bound once
}

func (s *udpSender) call(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&s.msg)), 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the poller waits for room, then calls again
		}
		s.n, s.errno = int(n), e
		return true
	}
}

// encode writes addr into s as this socket's family expects it; false if it cannot (a zone,
// another family), for the caller to use net's path, which fails or succeeds as it would.
func (u *UDP) encode(s *udpSender, addr *net.UDPAddr) bool {
	if addr == nil {
		s.msg.Name, s.msg.Namelen = nil, 0
		return true
	}
	if addr.Port < 0 || addr.Port > 0xffff || addr.Zone != "" {
		return false
	}
	s.sa = unix.RawSockaddrInet6{}
	port := (*[2]byte)(unsafe.Pointer(&s.sa.Port)) // network byte order, at the same offset in both families
	port[0], port[1] = byte(addr.Port>>8), byte(addr.Port)
	switch u.family {
	case unix.AF_INET:
		ip4 := addr.IP.To4()
		if ip4 == nil {
			return false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&s.sa))
		sa4.Family = unix.AF_INET
		copy(sa4.Addr[:], ip4)
		s.msg.Namelen = unix.SizeofSockaddrInet4
	default:
		ip16 := addr.IP.To16() // an IPv4 address becomes ::ffff:a.b.c.d, as net sends it
		if ip16 == nil {
			return false
		}
		s.sa.Family = unix.AF_INET6
		copy(s.sa.Addr[:], ip16)
		s.msg.Namelen = unix.SizeofSockaddrInet6
	}
	s.msg.Name = (*byte)(unsafe.Pointer(&s.sa))
	return true
}

// WriteMsgUDP sends b with the control messages oob to addr, as (*net.UDPConn).WriteMsgUDP.
func (u *UDP) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if u.rc == nil {
		return u.UDPConn.WriteMsgUDP(b, oob, addr)
	}
	s := u.senders.Get().(*udpSender)
	defer u.senders.Put(s)
	if !u.encode(s, addr) {
		return u.UDPConn.WriteMsgUDP(b, oob, addr)
	}
	s.msg.Iov, s.msg.Control = nil, nil
	s.msg.SetIovlen(0)
	s.msg.SetControllen(0)
	if len(b) > 0 {
		s.iov.Base = &b[0]
		s.iov.SetLen(len(b))
		s.msg.Iov = &s.iov
		s.msg.SetIovlen(1)
	}
	if len(oob) > 0 {
		s.msg.Control = &oob[0]
		s.msg.SetControllen(len(oob))
	}
	s.n, s.errno = 0, 0
	raceReleaseMerge()
	werr := u.rc.Write(s.fn)
	n, errno := s.n, s.errno
	s.iov.Base, s.msg.Control = nil, nil // do not keep the caller's buffers reachable from the pool
	if werr == nil && errno != 0 {
		werr = os.NewSyscallError("sendmsg", errno)
	}
	if werr != nil {
		var dst net.Addr
		if addr != nil {
			dst = addr
		}
		return 0, 0, &net.OpError{Op: "write", Net: "udp", Source: u.LocalAddr(), Addr: dst, Err: werr}
	}
	raceReadRange(b[:n])
	return n, len(oob), nil
}

// udpReceiver is recvmmsg's arguments, reused by every ReadBatch (under UDP.rmu).
type udpReceiver struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	count int
	flags int
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // r.call, bound once
	groFn func(fd uintptr) bool // r.groCall, bound once
	gro   groState              // gro_linux.go

	// The last source address returned: consecutive datagrams from one peer (the usual case)
	// share one *net.UDPAddr instead of allocating one each.
	lastName [unix.SizeofSockaddrInet6]byte
	lastLen  uint32
	lastAddr *net.UDPAddr
}

func (r *udpReceiver) call(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])),
			uintptr(r.count), uintptr(r.flags), 0, 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// ReadBatch reads up to len(ms) datagrams, as ipv4.PacketConn.ReadBatch: for each, N bytes
// into Buffers[0], NN bytes of control messages into OOB, Flags and the source Addr.
func (u *UDP) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	if u.rc == nil || !singleBuffers(ms) {
		return u.fallback.ReadBatch(ms, flags)
	}
	u.rmu.Lock()
	defer u.rmu.Unlock()
	r := &u.recv
	if len(r.hdrs) < len(ms) {
		r.hdrs = make([]unix.Mmsghdr, len(ms))
		r.iovs = make([]unix.Iovec, len(ms))
		r.names = make([]unix.RawSockaddrInet6, len(ms))
	}
	if u.gro.Load() {
		return u.readGRO(ms, flags)
	}
	for i := range ms {
		h := &r.hdrs[i]
		*h = unix.Mmsghdr{}
		buf := ms[i].Buffers[0]
		r.iovs[i].Base = &buf[0]
		r.iovs[i].SetLen(len(buf))
		h.Hdr.Iov = &r.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		if len(ms[i].OOB) > 0 {
			h.Hdr.Control = &ms[i].OOB[0]
			h.Hdr.SetControllen(len(ms[i].OOB))
		}
	}
	r.count, r.flags, r.n, r.errno = len(ms), flags, 0, 0
	rerr := u.rc.Read(r.fn)
	n, errno := r.n, r.errno
	for i := range ms { // do not keep the caller's buffers reachable
		r.iovs[i].Base = nil
		r.hdrs[i].Hdr.Control = nil
	}
	if rerr == nil && errno != 0 {
		rerr = os.NewSyscallError("recvmmsg", errno)
	}
	if rerr != nil {
		return 0, &net.OpError{Op: "read", Net: "udp", Source: u.LocalAddr(), Err: rerr}
	}
	for i := 0; i < n; i++ {
		h := &r.hdrs[i]
		ms[i].N = int(h.Len)
		ms[i].NN = int(h.Hdr.Controllen)
		ms[i].Flags = int(h.Hdr.Flags)
		ms[i].Addr = r.addr(i)
		raceWriteRange(ms[i].Buffers[0][:ms[i].N])
		raceWriteRange(ms[i].OOB[:ms[i].NN])
	}
	raceAcquire()
	return n, nil
}

func singleBuffers(ms []ipv4.Message) bool {
	for i := range ms {
		if len(ms[i].Buffers) != 1 || len(ms[i].Buffers[0]) == 0 {
			return false
		}
	}
	return true
}

// addr returns the source of datagram i as x/net returns it: a 4-byte IP from an AF_INET
// socket, 16 bytes (IPv4-mapped included) and the zone from an AF_INET6 one.
func (r *udpReceiver) addr(i int) net.Addr {
	nl := r.hdrs[i].Hdr.Namelen
	if nl > unix.SizeofSockaddrInet6 {
		nl = unix.SizeofSockaddrInet6
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&r.names[i])), nl)
	if r.lastAddr != nil && nl == r.lastLen && bytes.Equal(raw, r.lastName[:nl]) {
		return r.lastAddr
	}
	var a *net.UDPAddr
	switch r.names[i].Family {
	case unix.AF_INET:
		if nl < unix.SizeofSockaddrInet4 {
			return nil
		}
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.names[i]))
		a = &net.UDPAddr{IP: append(net.IP(nil), sa.Addr[:]...), Port: port(sa.Port)}
	case unix.AF_INET6:
		if nl < unix.SizeofSockaddrInet6 {
			return nil
		}
		sa := &r.names[i]
		a = &net.UDPAddr{IP: append(net.IP(nil), sa.Addr[:]...), Port: port(sa.Port)}
		if sa.Scope_id != 0 {
			a.Zone = zoneName(int(sa.Scope_id))
		}
	default:
		return nil
	}
	copy(r.lastName[:], raw)
	r.lastLen, r.lastAddr = nl, a
	return a
}

// port reads a port stored in network byte order.
func port(p uint16) int {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return int(b[0])<<8 | int(b[1])
}

func zoneName(index int) string {
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		return ifi.Name
	}
	return strconv.Itoa(index)
}

// Conn returns c with Read and Write made of raw read and write calls when c is a
// *net.TCPConn; any other connection is returned as it is. The result keeps every other
// method of c (deadlines, CloseWrite, ReadFrom and WriteTo with their splice and sendfile).
func Conn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	t := &tcpConn{TCPConn: tc, rc: rc}
	t.r.fn, t.w.fn = t.r.read, t.w.write
	return t
}

// tcpConn is a *net.TCPConn whose Read and Write are raw calls.
type tcpConn struct {
	*net.TCPConn
	rc  syscall.RawConn
	rmu sync.Mutex
	r   ioCall
	wmu sync.Mutex
	w   ioCall
}

// ioCall is one read or write's arguments; fn is its bound method.
type ioCall struct {
	buf   []byte
	n     int
	errno syscall.Errno
	zero  bool // a write of a non-empty buffer wrote nothing
	fn    func(fd uintptr) bool
}

func (c *ioCall) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.buf[0])), uintptr(len(c.buf)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.n, c.errno = int(n), e
		return true
	}
}

// write writes all of buf, waiting (returning false) whenever the socket is full.
func (c *ioCall) write(fd uintptr) bool {
	for len(c.buf) > 0 {
		n, _, e := syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&c.buf[0])), uintptr(len(c.buf)))
		switch e {
		case 0:
			if n == 0 {
				c.zero = true // as net: io.ErrUnexpectedEOF rather than a loop
				return true
			}
			c.n += int(n)
			c.buf = c.buf[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.errno = e
			return true
		}
	}
	return true
}

// maxRW caps one read or write, as the net package does.
const maxRW = 1 << 30

func (c *tcpConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(b) > maxRW {
		b = b[:maxRW]
	}
	c.rmu.Lock()
	c.r.buf, c.r.n, c.r.errno = b, 0, 0
	err := c.rc.Read(c.r.fn)
	n, errno := c.r.n, c.r.errno
	c.r.buf = nil
	c.rmu.Unlock()
	if err == nil && errno != 0 {
		err = os.NewSyscallError("read", errno)
	}
	if err != nil {
		return 0, c.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	raceWriteRange(b[:n])
	raceAcquire()
	return n, nil
}

func (c *tcpConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	raceReleaseMerge()
	c.wmu.Lock()
	c.w.buf, c.w.n, c.w.errno, c.w.zero = b, 0, 0, false
	err := c.rc.Write(c.w.fn)
	n, errno, zero := c.w.n, c.w.errno, c.w.zero
	c.w.buf = nil
	c.wmu.Unlock()
	raceReadRange(b[:n])
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	if err == nil && zero {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, c.opError("write", err)
	}
	return n, nil
}

func (c *tcpConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
