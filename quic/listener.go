package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	quicgo "github.com/quic-go/quic-go"
)

// Listener accepts QUIC connections on one UDP socket, served by one quicgo.Transport that
// carries Config.StatelessResetKey. It serves one tls.Config, which may offer several ALPN
// protocols; callers dispatch on ConnectionState().TLS.NegotiatedProtocol.
type Listener struct {
	pc net.PacketConn
	tr *quicgo.Transport
	ln *quicgo.Listener

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
	tr := &quicgo.Transport{Conn: lossy(pc), StatelessResetKey: cfg.StatelessResetKey}
	ln, err := tr.Listen(tlsConf, cfg.QUICConfig())
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, fmt.Errorf("quic: listen on %s: %w", pc.LocalAddr(), err)
	}
	return &Listener{pc: pc, tr: tr, ln: ln}, nil
}

// Accept waits for the next connection whose handshake has completed. It returns an error
// when ctx ends or the Listener is closed (quicgo.ErrServerClosed).
func (l *Listener) Accept(ctx context.Context) (*quicgo.Conn, error) {
	return l.ln.Accept(ctx)
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
