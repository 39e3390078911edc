package quic

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

// Defaults for Config. A zero field in Config means its default.
const (
	DefaultHandshakeTimeout               = 5 * time.Second
	DefaultKeepAlivePeriod                = 2 * time.Second
	DefaultMaxIdleTimeout                 = 6 * time.Second
	DefaultMaxIncomingStreams             = 10000
	DefaultInitialStreamReceiveWindow     = 256 << 10 // 256 KiB
	DefaultMaxStreamReceiveWindow         = 16 << 20  // 16 MiB
	DefaultInitialConnectionReceiveWindow = 32 << 20  // 32 MiB
	DefaultMaxConnectionReceiveWindow     = 64 << 20  // 64 MiB
	DefaultMaxAckDelay                    = time.Millisecond
)

// Liveness defaults for agent links (kasd's agent listener, agentd's dialer, through the
// daemons' flags), chosen for fleets of tens of thousands of idle agents per kasd: each idle
// connection costs one keep-alive exchange (the agent's PING and kasd's ACK: kasd's listener
// sets PeerKeepsAlive) per period, about 75 µs of kasd CPU on a 2-core VM, so 50,000 agents
// cost about 15 % of a core at 25s where they would cost several cores at 2s (docs/scale.md).
// 25s stays under the shortest common UDP NAT timeout (30s); the idle timeout is more than two
// periods. Dead connections that a request needs are noticed much sooner than this, by
// probing (docs/scale.md).
const (
	DefaultAgentKeepAlivePeriod = 25 * time.Second
	DefaultAgentMaxIdleTimeout  = 60 * time.Second
)

// Config configures QUIC for a Listener or a Dialer. The zero value is valid: every zero
// field takes its default. It is used by value and never modified by this package.
type Config struct {
	// HandshakeTimeout bounds a Dial (QUIC and TLS handshake) and, on both sides, the time the
	// handshake may go without receiving a packet (twice this for the whole handshake).
	// Default 5s.
	HandshakeTimeout time.Duration
	// KeepAlivePeriod is how often a PING is sent on an otherwise idle connection, so that a
	// live peer is never declared dead and NAT bindings stay open. Must be less than
	// MaxIdleTimeout (quic-go also caps it at half the negotiated idle timeout). Default 2s,
	// or MaxIdleTimeout/3 if that is smaller.
	KeepAlivePeriod time.Duration
	// PeerKeepsAlive: this side sends no keep-alive PINGs of its own and relies on the peer's,
	// which it acknowledges (kasd's agent listener: every agentd sends them, to keep its NAT
	// binding open). When both sides send them, their timers, both counted from the last
	// packet received, fire within max_ack_delay of each other, so about half of the periods
	// carry two PINGs and two ACKs instead of one of each (docs/scale.md). KeepAlivePeriod is
	// still validated and means the period expected from the peer; the peer's must not be
	// longer, or the connection idles out. Default false.
	PeerKeepsAlive bool
	// MaxIdleTimeout: a silent peer is declared dead after this long without receiving any
	// packet, and the connection's Context ends with a *quicgo.IdleTimeoutError. The effective
	// value is the minimum of both peers'. Default 6s.
	MaxIdleTimeout time.Duration
	// MaxIncomingStreams is how many concurrent bidirectional streams the peer may open; the
	// peer's OpenStreamSync blocks beyond it until one of its streams completes. Default 10000.
	// Unidirectional streams are not used by qkas: the peer may open none.
	MaxIncomingStreams int64
	// InitialStreamReceiveWindow is the initial per-stream flow-control window; quic-go grows
	// it up to MaxStreamReceiveWindow when the application reads fast enough, so only streams
	// that are read quickly (bulk transfers) get large windows, and a stream whose reader is slow
	// keeps this much unread data at most. Default 256 KiB.
	InitialStreamReceiveWindow uint64
	// MaxStreamReceiveWindow bounds the memory one stream's unread data can take. Default 16 MiB.
	MaxStreamReceiveWindow uint64
	// InitialConnectionReceiveWindow is the initial connection-wide flow-control window. It is
	// sized so that many slow streams together cannot use it up and stall the connection's other
	// streams: 128 streams at InitialStreamReceiveWindow. (It was 2 MiB with 1 MiB per stream:
	// two slowly read downloads stalled every other request on the connection.) A peer can make
	// this side buffer at most MaxConnectionReceiveWindow of unread data per connection.
	// Default 32 MiB.
	InitialConnectionReceiveWindow uint64
	// MaxConnectionReceiveWindow bounds the memory all unread data of one connection can take.
	// Default 64 MiB.
	MaxConnectionReceiveWindow uint64
	// MaxAckDelay is how long this side may delay an acknowledgement; it is also advertised to
	// the peer, which adds it to its probe timeout. quic-go's own 25 ms made a small request
	// whose last packet was lost wait ~28 ms for its retransmission; at 1 ms it waits ~3 ms
	// (third_party/README.md). The cost: an answer slower than this is preceded by an ACK-only
	// packet. Needs the patched quic-go in third_party/. Default 1ms.
	MaxAckDelay time.Duration
	// StatelessResetKey derives the stateless reset tokens of the connections served by the
	// Listener (or Dialer) using this Config. Keep it stable across restarts (see
	// LoadOrCreateStatelessResetKey) so peers of a restarted process learn at their next
	// packet that their connection is gone, instead of waiting for MaxIdleTimeout.
	// Default nil: no stateless resets are sent (they are still received and honoured).
	StatelessResetKey *quicgo.StatelessResetKey
	// SocketReceiveBuffer and SocketSendBuffer are the UDP buffer sizes (bytes) the Listener or
	// Dialer asks the kernel for when it opens its socket (with SO_RCVBUFFORCE/SO_SNDBUFFORCE
	// where permitted, else up to net.core.rmem_max/wmem_max); what was obtained is reported
	// by SocketBuffers. Default DefaultSocketBuffer (7 MiB); negative leaves the system's size.
	SocketReceiveBuffer, SocketSendBuffer int
	// NoUDPGRO turns off the receiving of coalesced datagrams (UDP_GRO, Linux 5.0+) on the
	// Listener's or Dialer's socket. With it on (the default), a run of full-size datagrams
	// from one peer — a sender's GSO batch on loopback or veth, back-to-back datagrams through a
	// NIC's GRO — reaches the process in one read and one copy instead of one each, and is
	// split again before quic-go sees it (internal/rawio). Whether the kernel accepted is
	// reported by GRO.
	NoUDPGRO bool
	// SocketPerConnection, Dialer only: each connection is dialled from a UDP socket of its own
	// (a new source port), closed when the connection ends, instead of the Dialer's one shared
	// socket. A load balancer places UDP flows by source address and port, so behind one
	// address the connections of one agent then land on different servers instead of all on
	// one, and a redial is a new flow, placed anew (the server that asked it to go, draining,
	// is no longer a candidate), where the shared socket's flow stays pinned to it. Costs a
	// socket per connection. Default false.
	SocketPerConnection bool
	// Sockets, Dialer only: if not nil, opens the Dialer's UDP sockets instead of
	// net.ListenUDP on all interfaces: for a process whose dialing goroutines are not in the
	// network namespace the sockets must be in (a test that runs agents in a namespace of
	// their own from one thread). Default nil. (An interface, so that Config stays comparable.)
	Sockets interface{ ListenUDP() (*net.UDPConn, error) }
	// RootCAs, Dialer only: if not nil, each dial verifies the server with the pool it returns
	// at that moment instead of the tls.Config's RootCAs, so that a CA bundle reloaded without
	// a restart (internal/certreload) applies to new connections. Default nil.
	// (An interface, not a func, so that Config stays comparable.)
	RootCAs interface{ Pool() *x509.CertPool }
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxIdleTimeout == 0 {
		c.MaxIdleTimeout = DefaultMaxIdleTimeout
	}
	if c.KeepAlivePeriod == 0 {
		c.KeepAlivePeriod = min(DefaultKeepAlivePeriod, c.MaxIdleTimeout/3)
	}
	if c.MaxIncomingStreams == 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.MaxStreamReceiveWindow == 0 {
		c.MaxStreamReceiveWindow = DefaultMaxStreamReceiveWindow
	}
	if c.MaxConnectionReceiveWindow == 0 {
		c.MaxConnectionReceiveWindow = DefaultMaxConnectionReceiveWindow
	}
	// A maximum set below an initial default lowers that default with it, so that a budget
	// (kasd's --agent-connection-window) is one setting.
	if c.InitialStreamReceiveWindow == 0 {
		c.InitialStreamReceiveWindow = min(DefaultInitialStreamReceiveWindow, c.MaxStreamReceiveWindow)
	}
	if c.InitialConnectionReceiveWindow == 0 {
		c.InitialConnectionReceiveWindow = min(DefaultInitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow)
	}
	if c.MaxAckDelay == 0 {
		c.MaxAckDelay = DefaultMaxAckDelay
	}
	if c.SocketReceiveBuffer == 0 {
		c.SocketReceiveBuffer = DefaultSocketBuffer
	}
	if c.SocketSendBuffer == 0 {
		c.SocketSendBuffer = DefaultSocketBuffer
	}
	return c
}

// Validate reports whether c, with defaults applied, is usable: durations and the stream
// limit are positive, KeepAlivePeriod < MaxIdleTimeout, and each initial window is at most
// its maximum.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if c.HandshakeTimeout < 0 {
		errs = append(errs, fmt.Errorf("HandshakeTimeout %v must be positive", c.HandshakeTimeout))
	}
	if c.KeepAlivePeriod < 0 {
		errs = append(errs, fmt.Errorf("KeepAlivePeriod %v must be positive", c.KeepAlivePeriod))
	}
	if c.MaxIdleTimeout < 0 {
		errs = append(errs, fmt.Errorf("MaxIdleTimeout %v must be positive", c.MaxIdleTimeout))
	}
	if c.KeepAlivePeriod >= c.MaxIdleTimeout {
		errs = append(errs, fmt.Errorf("KeepAlivePeriod %v must be less than MaxIdleTimeout %v", c.KeepAlivePeriod, c.MaxIdleTimeout))
	}
	if c.MaxIncomingStreams < 0 {
		errs = append(errs, fmt.Errorf("MaxIncomingStreams %d must be positive", c.MaxIncomingStreams))
	}
	if c.InitialStreamReceiveWindow > c.MaxStreamReceiveWindow {
		errs = append(errs, fmt.Errorf("InitialStreamReceiveWindow %d exceeds MaxStreamReceiveWindow %d", c.InitialStreamReceiveWindow, c.MaxStreamReceiveWindow))
	}
	if c.MaxAckDelay < 0 || c.MaxAckDelay >= 1<<14*time.Millisecond {
		errs = append(errs, fmt.Errorf("MaxAckDelay %v must be positive and below 2^14 ms", c.MaxAckDelay))
	}
	if c.InitialConnectionReceiveWindow > c.MaxConnectionReceiveWindow {
		errs = append(errs, fmt.Errorf("InitialConnectionReceiveWindow %d exceeds MaxConnectionReceiveWindow %d", c.InitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("quic config: %w", err)
	}
	return nil
}

// QUICConfig returns the quic-go configuration for c with defaults applied. It does not
// validate c; Listen and NewDialer do.
func (c Config) QUICConfig() *quicgo.Config {
	c = c.WithDefaults()
	keepAlive := c.KeepAlivePeriod
	if c.PeerKeepsAlive {
		keepAlive = 0 // quic-go sends no keep-alive PINGs
	}
	return &quicgo.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.MaxIdleTimeout,
		KeepAlivePeriod:                keepAlive,
		MaxIncomingStreams:             c.MaxIncomingStreams,
		MaxIncomingUniStreams:          -1, // qkas uses bidirectional streams only
		InitialStreamReceiveWindow:     c.InitialStreamReceiveWindow,
		MaxStreamReceiveWindow:         c.MaxStreamReceiveWindow,
		InitialConnectionReceiveWindow: c.InitialConnectionReceiveWindow,
		MaxConnectionReceiveWindow:     c.MaxConnectionReceiveWindow,
		MaxAckDelay:                    c.MaxAckDelay,
	}
}

// Stream error codes, sent with RESET_STREAM / STOP_SENDING. They end one stream only.
const (
	StreamCodeNoError  quicgo.StreamErrorCode = 0
	StreamCodeCanceled quicgo.StreamErrorCode = 0x10 // request canceled by the client
	StreamCodeRefused  quicgo.StreamErrorCode = 0x11 // refused before processing
	StreamCodeInternal quicgo.StreamErrorCode = 0x12
	// StreamCodeServiceFailed: the service's response broke after its head had left (its body
	// ended short of its length, bad chunking, its connection reset): the service's failure,
	// not the agent's or the tunnel's.
	StreamCodeServiceFailed quicgo.StreamErrorCode = 0x13
	// StreamCodeOverloaded: refused, not processed, because a limit was reached (kasd: an
	// agent's open streams, --max-agent-streams-per-agent): retry later.
	StreamCodeOverloaded quicgo.StreamErrorCode = 0x14
)

// Connection close codes, sent with CONNECTION_CLOSE. They end the whole connection.
const (
	ConnCodeNoError  quicgo.ApplicationErrorCode = 0
	ConnCodeShutdown quicgo.ApplicationErrorCode = 0x1 // the peer is shutting down / draining
	ConnCodeRefused  quicgo.ApplicationErrorCode = 0x2 // authentication/handshake refused
	ConnCodeProtocol quicgo.ApplicationErrorCode = 0x3
)

// checkTLS validates a caller's tls.Config and returns a clone with TLS 1.3 as minimum.
func checkTLS(tlsConf *tls.Config) (*tls.Config, error) {
	if tlsConf == nil {
		return nil, errors.New("quic: tls.Config is nil")
	}
	if len(tlsConf.NextProtos) == 0 {
		return nil, errors.New("quic: tls.Config.NextProtos is empty: QUIC requires an ALPN protocol")
	}
	tlsConf = tlsConf.Clone()
	if tlsConf.MinVersion < tls.VersionTLS13 {
		tlsConf.MinVersion = tls.VersionTLS13
	}
	return tlsConf, nil
}
