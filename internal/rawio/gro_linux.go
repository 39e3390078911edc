//go:build linux

package rawio

import (
	"encoding/binary"
	"net"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Receiving coalesced datagrams (UDP_GRO).
//
// With UDP_GRO set on a socket, the kernel hands a run of datagrams of one flow and size to
// the socket as one buffer (a "GRO batch"), with a control message giving the size of each
// datagram (the last may be shorter). On loopback and veth a sender's GSO batch (quic-go sends
// up to 20 KiB of full-size packets in one sendmsg) then arrives whole: one socket buffer, one
// wake-up and one copy instead of a dozen, with no segmentation in the receiving softirq; on a
// NIC the kernel's UDP GRO does the same for datagrams arriving back to back.
//
// A GRO batch is cut when the read buffer is smaller than it, so every buffer of a GRO read is
// 64 KiB: a chunk of groSlots of them, taken from a pool only for the system call and while
// the datagrams it holds are being handed out (an idle socket holds none: a process with
// thousands of sockets, such as the scale benchmark's fleet, pays nothing while they wait).
// ReadBatch then copies each datagram into the caller's buffers, one per message, exactly as
// if the kernel had delivered them one by one: the caller (quic-go) sees no difference.

const (
	groSlotSize = 1 << 16 // a UDP payload is at most 65,507 bytes: no batch is ever cut
	groSlots    = 8       // quic-go's batch size
	groOOBSize  = 256     // room for UDP_GRO, TOS/TCLASS and PKTINFO of both families (~150 bytes at most)
)

// groChunk is the memory of one GRO read.
type groChunk struct {
	buf [groSlots * groSlotSize]byte
	oob [groSlots * groOOBSize]byte
}

var groChunks = sync.Pool{New: func() any { return new(groChunk) }}

// groDatagram is what is left to hand out of one datagram (or GRO batch) of a GRO read.
type groDatagram struct {
	data  []byte // in the chunk
	seg   int    // size of each datagram in data; 0: data is one datagram
	oob   []byte // the control messages to give each datagram (UDP_GRO removed), in the chunk
	flags int
	addr  net.Addr
}

// groState is the receiver's GRO state, under UDP.rmu.
type groState struct {
	chunk *groChunk
	pend  [groSlots]groDatagram
	head  int // pend[head:n] is left to hand out
	n     int
}

// EnableGRO asks the kernel to deliver coalesced datagrams (UDP_GRO) to this socket, and
// makes ReadBatch split them again. Call it before the first read. It reports whether the
// kernel accepted: a kernel without UDP_GRO (before 5.0) leaves the socket as it was.
func (u *UDP) EnableGRO() bool {
	if u.rc == nil {
		return false
	}
	var serr error
	if err := u.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return false
	}
	u.gro.Store(true)
	return true
}

// GRO reports whether EnableGRO succeeded. (It does not wait for a read in progress.)
func (u *UDP) GRO() bool { return u.gro.Load() }

// groCall is the GRO read's system call: it takes a chunk for the call and gives it back if
// nothing was there to read, so that a socket waiting for data holds no chunk.
func (r *udpReceiver) groCall(fd uintptr) bool {
	g := &r.gro
	if g.chunk == nil {
		g.chunk = groChunks.Get().(*groChunk)
	}
	for i := 0; i < r.count; i++ {
		h := &r.hdrs[i]
		*h = unix.Mmsghdr{}
		r.iovs[i].Base = &g.chunk.buf[i*groSlotSize]
		r.iovs[i].SetLen(groSlotSize)
		h.Hdr.Iov = &r.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		h.Hdr.Control = &g.chunk.oob[i*groOOBSize]
		h.Hdr.SetControllen(groOOBSize)
	}
	if r.call(fd) {
		return true
	}
	groChunks.Put(g.chunk)
	g.chunk = nil
	return false
}

// readGRO is ReadBatch on a socket with GRO on (under u.rmu): it hands out what the last read
// left, else reads up to groSlots datagrams or batches into a chunk and hands out the first.
func (u *UDP) readGRO(ms []ipv4.Message, flags int) (int, error) {
	r := &u.recv
	g := &r.gro
	if g.head == g.n {
		r.count, r.flags, r.n, r.errno = min(len(ms), groSlots), flags, 0, 0
		rerr := u.rc.Read(r.groFn)
		n, errno := r.n, r.errno
		for i := 0; i < r.count; i++ {
			r.iovs[i].Base = nil
			r.hdrs[i].Hdr.Control = nil
		}
		if rerr == nil && errno != 0 {
			rerr = os.NewSyscallError("recvmmsg", errno)
		}
		if rerr != nil {
			u.releaseChunk()
			return 0, &net.OpError{Op: "read", Net: "udp", Source: u.LocalAddr(), Err: rerr}
		}
		g.head, g.n = 0, n
		for i := 0; i < n; i++ {
			h := &r.hdrs[i]
			d := &g.pend[i]
			d.data = g.chunk.buf[i*groSlotSize : i*groSlotSize+int(h.Len)]
			d.oob, d.seg = splitGROControl(g.chunk.oob[i*groOOBSize : i*groOOBSize+int(h.Hdr.Controllen)])
			d.flags = int(h.Hdr.Flags)
			d.addr = r.addr(i)
		}
		raceAcquire()
	}
	k := 0
	for k < len(ms) && g.head < g.n {
		d := &g.pend[g.head]
		size := len(d.data)
		if d.seg > 0 && d.seg < size {
			size = d.seg
		}
		m := &ms[k]
		m.N = copy(m.Buffers[0], d.data[:size])
		m.NN = copy(m.OOB, d.oob)
		m.Flags = d.flags
		if m.N < size {
			m.Flags |= unix.MSG_TRUNC
		}
		if m.NN < len(d.oob) {
			m.Flags |= unix.MSG_CTRUNC
		}
		m.Addr = d.addr
		k++
		d.data = d.data[size:]
		if len(d.data) == 0 {
			*d = groDatagram{}
			g.head++
		}
	}
	if g.head == g.n {
		u.releaseChunk()
	}
	return k, nil
}

// releaseChunk gives the chunk back to the pool once nothing in it is left to hand out.
func (u *UDP) releaseChunk() {
	g := &u.recv.gro
	for i := range g.pend[:g.n] {
		g.pend[i] = groDatagram{}
	}
	g.head, g.n = 0, 0
	if g.chunk != nil {
		groChunks.Put(g.chunk)
		g.chunk = nil
	}
}

// splitGROControl returns the control messages of a read without the UDP_GRO one, compacted
// in place, and the datagram size that one gave (0 if none: the read is one datagram).
// Parsed by hand: x/sys's parser converts a pointer before it checks the length.
func splitGROControl(oob []byte) (rest []byte, seg int) {
	hdrLen := unix.CmsgLen(0)
	lenSize := int(unsafe.Sizeof(unix.Cmsghdr{}.Len))
	out := 0
	for data := oob; len(data) >= hdrLen; {
		var l uint64
		if lenSize == 8 {
			l = binary.NativeEndian.Uint64(data)
		} else {
			l = uint64(binary.NativeEndian.Uint32(data))
		}
		if l < uint64(hdrLen) || l > uint64(len(data)) {
			break // as the kernel wrote it; nothing after a malformed header is usable
		}
		level := int32(binary.NativeEndian.Uint32(data[lenSize:]))
		typ := int32(binary.NativeEndian.Uint32(data[lenSize+4:]))
		body := data[hdrLen:l]
		space := min(unix.CmsgSpace(int(l)-hdrLen), len(data))
		if level == unix.IPPROTO_UDP && typ == unix.UDP_GRO && len(body) >= 2 {
			if len(body) >= 4 {
				seg = int(binary.NativeEndian.Uint32(body))
			} else {
				seg = int(binary.NativeEndian.Uint16(body))
			}
		} else {
			out += copy(oob[out:], data[:space])
		}
		data = data[space:]
	}
	return oob[:out], seg
}
