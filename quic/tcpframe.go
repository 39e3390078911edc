package quic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// QUIC over TCP
//
// Where UDP is blocked (firewalls, HTTPS proxies), qkas carries the very same QUIC connection
// over one TCP connection instead of speaking a second stream protocol: the QUIC handshake,
// streams, flow control, error codes and keep-alives are unchanged; only the packets travel
// in a TCP byte stream. The TCP connection is wrapped in TLS 1.3 with ALPN [TCPALPN] and the
// server certificate of the QUIC listener, so that middleboxes and CONNECT proxies see an
// ordinary TLS connection. After the TLS handshake:
//
//	client → server, once:  "QKAS/TCP" (8 bytes) version (1 byte, = 1)
//	both directions, then:  length (2 bytes, big endian, 1..MaxTCPPacket) QUIC packet (length bytes)
//
// A server closes a connection whose preamble or frame lengths are anything else, counted by
// reason (TCPListener.Rejections). Each TCP connection carries exactly one QUIC connection.
//
// Cost: QUIC's loss recovery and congestion control run on top of TCP's. Over a clean path
// that costs little; under loss, one lost TCP segment stalls every stream of the connection
// until it is retransmitted (head-of-line blocking across requests), which QUIC over UDP
// avoids. docs/transport.md has the measured figures.

// TCPALPN is the ALPN protocol of the TLS connection that carries QUIC packets over TCP.
const TCPALPN = "qkas-tcp/1"

// MaxTCPPacket is the largest QUIC packet a frame may carry: quic-go's packets are at most
// 1452 bytes (its largest path MTU probe); the rest is slack. Larger frames close the
// connection.
const MaxTCPPacket = 1600

// tcpVersion is the framing version sent in the preamble.
const tcpVersion = 1

// tcpPreamble is what a client sends first, after the TLS handshake.
var tcpPreamble = [9]byte{'Q', 'K', 'A', 'S', '/', 'T', 'C', 'P', tcpVersion}

// Errors of the framing, each a reason label of TCPListener's rejections.
var (
	// ErrTCPPreamble: the connection did not start with the preamble of a version we speak.
	ErrTCPPreamble = errors.New("quic: tcp: bad preamble")
	// ErrTCPFrameLength: a frame announced a packet of 0 or more than MaxTCPPacket bytes.
	ErrTCPFrameLength = errors.New("quic: tcp: bad frame length")
)

// AppendTCPPreamble appends the client's preamble to b.
func AppendTCPPreamble(b []byte) []byte { return append(b, tcpPreamble[:]...) }

// ReadTCPPreamble reads and checks the client's preamble. A stream that does not start with it
// (or announces another version) gets ErrTCPPreamble; a short stream the read error.
func ReadTCPPreamble(r io.Reader) error {
	var p [len(tcpPreamble)]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return err
	}
	if p != tcpPreamble {
		return fmt.Errorf("%w (%q)", ErrTCPPreamble, p[:])
	}
	return nil
}

// AppendTCPFrame appends one frame carrying packet to b. It panics if packet is empty or
// longer than MaxTCPPacket: quic-go never writes such packets.
func AppendTCPFrame(b, packet []byte) []byte {
	if len(packet) == 0 || len(packet) > MaxTCPPacket {
		panic(fmt.Sprintf("quic: tcp frame of %d bytes", len(packet)))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(packet)))
	return append(b, packet...)
}

// ReadTCPFrame reads one frame from r into buf (at least MaxTCPPacket bytes) and returns the
// packet's length. The length is checked before anything is read into buf.
func ReadTCPFrame(r io.Reader, buf []byte) (int, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n == 0 || n > MaxTCPPacket || n > len(buf) {
		return 0, fmt.Errorf("%w: %d", ErrTCPFrameLength, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return n, nil
}

// TransportOf names the transport of a QUIC connection from its remote address: "tcp" when
// its packets travel over TCP (a TCPListener or TCPDialer connection), "quic" otherwise.
func TransportOf(remote net.Addr) string {
	if _, ok := remote.(*net.TCPAddr); ok {
		return "tcp"
	}
	return "quic"
}
