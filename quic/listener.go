package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	quicgo "github.com/quic-go/quic-go"
)

// Listener accepts QUIC connections on one UDP socket, served by one quicgo.Transport that
// carries Config.StatelessResetKey. It serves one tls.Config, which may offer several ALPN
// protocols; callers dispatch on ConnectionState().TLS.NegotiatedProtocol.
type Listener struct {
	pc net.PacketConn
	tr *quicgo.Transport
	ln *quicgo.Listener

	gate atomic.Pointer[HandshakeGate] // nil: every handshake is let through

	closeOnce sync.Once
	closeErr  error // set by closeOnce
}

// Listen opens a UDP socket on addr ("host:port"; port 0 picks one) and listens on it.
// tlsConf.NextProtos must be non-empty; tlsConf is cloned and its MinVersion raised to TLS 1.3.
func Listen(addr string, tlsConf *tls.Config, cfg Config) (*Listener, error) {
	// Validate before opening the socket so a bad config leaks nothing.
	if _, err := checkTLS(tlsConf); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	return ListenPacketConn(pc, tlsConf, cfg)
}

// ListenPacketConn listens on pc, which the Listener owns from now on (even when an error is
// returned, pc is closed). Meant for tests and for sockets handed over by a supervisor.
func ListenPacketConn(pc net.PacketConn, tlsConf *tls.Config, cfg Config) (*Listener, error) {
	tlsConf, err := checkTLS(tlsConf)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		pc.Close()
		return nil, err
	}
	sizeSocket(pc, cfg) // before quic-go sees it: quic-go then finds the buffers large enough
	l := &Listener{pc: pc}
	l.tr = &quicgo.Transport{Conn: lossy(pc, cfg.NoUDPGRO), StatelessResetKey: cfg.StatelessResetKey, ConnContext: l.connContext}
	l.ln, err = l.tr.Listen(tlsConf, cfg.QUICConfig())
	if err != nil {
		l.tr.Close()
		pc.Close()
		return nil, fmt.Errorf("quic: listen on %s: %w", pc.LocalAddr(), err)
	}
	return l, nil
}

// Accept waits for the next connection whose handshake has completed. It returns an error
// when ctx ends or the Listener is closed (quicgo.ErrServerClosed). A connection returned here
// has ended its HandshakeGate slot.
func (l *Listener) Accept(ctx context.Context) (*quicgo.Conn, error) {
	qc, err := l.ln.Accept(ctx)
	if err == nil {
		if h, ok := qc.Context().Value(handshakeKey{}).(*gatedHandshake); ok {
			stopped := h.stop()
			h.finish()
			if stopped {
				// The AfterFunc will not run, so nothing else reads h: the connection's context
				// keeps h for the connection's life, but not the closures and the AfterFunc's
				// context (~200 bytes per connection).
				h.end, h.stop = nil, nil
			}
		}
	}
	return qc, err
}

// A HandshakeGate decides whether a new connection may start its handshake. It is called for
// every Initial packet that belongs to no connection yet (by quic-go's packet handling
// goroutine, so it must not block), before any TLS work; the client's address is not validated.
// A refused client may call it several times for one dial: its first flight can be two Initial
// packets (a ClientHello with a post-quantum key share), and it retransmits an Initial whose
// refusal was lost. ok false
// refuses the connection: quic-go answers the Initial with a CONNECTION_CLOSE carrying the
// transport error CONNECTION_REFUSED and reason as its reason phrase (the client's dial fails
// with a remote *quicgo.TransportError whose ErrorMessage is reason; the carried quic-go patch
// sends it, at most 256 bytes, third_party/README.md), which costs one Initial packet sealed
// with keys derived from the client's connection ID: no key exchange, no signature, no
// connection state. The reason is not authenticated: a client may only take it as a hint. When ok, end is
// called exactly once, when the handshake ends: the connection is returned by Accept, or it
// failed or was closed before that (handshake timeout, TLS error, Listener closed).
//
// A gate bounds the handshakes in progress, so that a reconnect storm is answered with cheap
// refusals instead of thousands of key exchanges that all time out for want of CPU.
type HandshakeGate func(remote net.Addr) (end func(), reason string, ok bool)

// SetHandshakeGate installs g for connections that arrive from now on; nil lets every
// handshake through (the default). Safe to call at any time.
func (l *Listener) SetHandshakeGate(g HandshakeGate) {
	if g == nil {
		l.gate.Store(nil)
		return
	}
	l.gate.Store(&g)
}

type handshakeKey struct{}

// gatedHandshake is the gate slot of one connection, carried in its context until Accept.
// Small on purpose: it lives as long as the connection.
type gatedHandshake struct {
	end   func()      // the gate's
	stop  func() bool // unregisters the context.AfterFunc that ends the slot on failure
	ended atomic.Bool
}

// finish calls end the first time only.
func (h *gatedHandshake) finish() {
	if h.ended.CompareAndSwap(false, true) {
		h.end()
	}
}

// connContext is quicgo.Transport.ConnContext: quic-go calls it for a new connection before
// creating it, and ctx ends when the connection is closed or its handshake fails.
func (l *Listener) connContext(ctx context.Context, info *quicgo.ClientInfo) (context.Context, error) {
	g := l.gate.Load()
	if g == nil {
		return ctx, nil
	}
	end, reason, ok := (*g)(info.RemoteAddr)
	if !ok {
		// quic-go logs it at debug level and sends CONNECTION_REFUSED with the reason.
		return nil, &quicgo.TransportError{ErrorCode: quicgo.ConnectionRefused, ErrorMessage: reason}
	}
	h := &gatedHandshake{end: end}
	// No goroutine per handshake: the slot is given back by the context's own cancellation
	// (handshake failed, connection closed before Accept) or by Accept, whichever comes first.
	h.stop = context.AfterFunc(ctx, h.finish)
	return context.WithValue(ctx, handshakeKey{}, h), nil
}

// Addr is the local UDP address.
func (l *Listener) Addr() net.Addr { return l.pc.LocalAddr() }

// Close stops accepting, closes the transport and the socket. Closing the transport destroys
// every connection accepted by this Listener WITHOUT notifying the peers (no
// CONNECTION_CLOSE); close them with CloseWithError first for a graceful shutdown. Close
// returns when quic-go's goroutines for this socket and its connections are gone. It is
// idempotent: later calls return the first call's result.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		errLn := l.ln.Close()
		errTr := l.tr.Close()
		errPc := l.pc.Close()
		l.closeErr = errors.Join(ignoreClosed(errLn), ignoreClosed(errTr), ignoreClosed(errPc))
	})
	return l.closeErr
}

// ignoreClosed drops "already closed" errors: the socket may have died on its own (or been
// closed by a test simulating a crash) before Close.
func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, quicgo.ErrServerClosed) {
		return nil
	}
	return err
}
