//go:build linux

package main

import (
	"encoding/binary"
	"net"
	"sync/atomic"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// countingConn is a *net.UDPConn that counts the datagrams quic-go sends and receives on it.
// It keeps every method quic-go looks for on a *net.UDPConn (SyscallConn, ReadMsgUDP,
// WriteMsgUDP, SetReadBuffer) and adds ReadBatch, which quic-go prefers, so that quic-go
// runs exactly as on the bare socket: batched reads, GSO, ECN, DF.
type countingConn struct {
	*net.UDPConn
	batch *ipv4.PacketConn // recvmmsg on the same socket

	sent     atomic.Uint64 // datagrams handed to the kernel; a GSO send counts its segments
	received atomic.Uint64
}

func newCountingConn(c *net.UDPConn) *countingConn {
	return &countingConn{UDPConn: c, batch: ipv4.NewPacketConn(c)}
}

// ReadBatch is what quic-go uses to read (recvmmsg).
func (c *countingConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	n, err := c.batch.ReadBatch(ms, flags)
	c.received.Add(uint64(max(n, 0)))
	return n, err
}

func (c *countingConn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	n, oobn, flags, addr, err = c.UDPConn.ReadMsgUDP(b, oob)
	if err == nil {
		c.received.Add(1)
	}
	return n, oobn, flags, addr, err
}

func (c *countingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(b)
	if err == nil {
		c.received.Add(1)
	}
	return n, addr, err
}

// WriteMsgUDP is what quic-go uses to send.
func (c *countingConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	n, oobn, err = c.UDPConn.WriteMsgUDP(b, oob, addr)
	if err == nil {
		c.sent.Add(segments(len(b), oob))
	}
	return n, oobn, err
}

func (c *countingConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, addr)
	if err == nil {
		c.sent.Add(1)
	}
	return n, err
}

// segments is how many datagrams one sendmsg of n bytes puts on the wire: one, or with a
// UDP_SEGMENT (GSO) control message of size s, ceil(n/s).
func segments(n int, oob []byte) uint64 {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 1
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_SEGMENT && len(m.Data) >= 2 {
			if s := int(binary.NativeEndian.Uint16(m.Data)); s > 0 {
				return uint64((n + s - 1) / s)
			}
		}
	}
	return 1
}
