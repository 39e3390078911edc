package quic

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"

	"github.com/qkas/qkas/internal/rawio"
)

// transientSendErrors counts datagrams that the kernel refused to send for a reason that does
// not say anything about the peer: EPERM (a local firewall rule dropping the packet), ENOBUFS
// and EAGAIN (a full queue). quic-go treats any send error as fatal and closes the connection;
// qkas treats these as the loss of one datagram, which QUIC recovers from like any other loss.
var transientSendErrors atomic.Uint64

// TransientSendErrors returns how many datagrams were dropped by transient send errors since the
// process started, for metrics.
func TransientSendErrors() uint64 { return transientSendErrors.Load() }

// lossyUDPConn is the UDP socket handed to quic-go: a *net.UDPConn (so quic-go keeps its
// batched reads, GSO and ECN) whose sends turn transient errors into loss, and whose datagram
// sends and batched reads (quic-go uses the ReadBatch it finds) are raw system calls
// (internal/rawio: they keep the Go scheduler out of every packet).
type lossyUDPConn struct{ *rawio.UDP }

// newLossyUDPConn wraps c, with UDP_GRO on unless noGRO (Config.NoUDPGRO).
func newLossyUDPConn(c *net.UDPConn, noGRO bool) *lossyUDPConn {
	u := rawio.NewUDP(c)
	if !noGRO {
		u.EnableGRO() // refused by kernels before 5.0: the socket reads as before
	}
	return &lossyUDPConn{u}
}

func (c *lossyUDPConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	n, oobn, err := c.UDP.WriteMsgUDP(b, oob, addr)
	if err != nil && transientSendError(err) {
		transientSendErrors.Add(1)
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

func (c *lossyUDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, addr)
	if err != nil && transientSendError(err) {
		transientSendErrors.Add(1)
		return len(b), nil
	}
	return n, err
}

// transientSendError reports errors that drop one datagram but leave the path usable. EIO is
// not one of them: quic-go reads it as "GSO unsupported" and falls back.
func transientSendError(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN)
}

// lossy wraps pc when it is a UDP socket; other packet conns (tests) are used as they are.
func lossy(pc net.PacketConn, noGRO bool) net.PacketConn {
	if u, ok := pc.(*net.UDPConn); ok {
		return newLossyUDPConn(u, noGRO)
	}
	return pc
}
