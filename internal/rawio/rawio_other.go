//go:build !linux

package rawio

import (
	"net"

	"golang.org/x/net/ipv4"
)

// UDP is a *net.UDPConn whose ReadBatch is x/net's (the raw calls are Linux only).
type UDP struct {
	*net.UDPConn
	batch *ipv4.PacketConn
}

// NewUDP wraps c.
func NewUDP(c *net.UDPConn) *UDP { return &UDP{UDPConn: c, batch: ipv4.NewPacketConn(c)} }

// ReadBatch reads datagrams into ms, as ipv4.PacketConn.ReadBatch.
func (u *UDP) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	return u.batch.ReadBatch(ms, flags)
}

// Conn returns c as it is.
func Conn(c net.Conn) net.Conn { return c }

// EnableGRO does nothing here: UDP_GRO is Linux only.
func (u *UDP) EnableGRO() bool { return false }

// GRO reports false.
func (u *UDP) GRO() bool { return false }
