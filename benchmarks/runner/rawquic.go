package runner

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/quic"
)

// The raw quic-go baseline: the transport's floor. One quic-go stream per request or transfer
// over one connection, with qkas's QUIC configuration (quic.Config defaults), on loopback.
//
// A stream starts with op (1 byte) and n (8 bytes, big endian); for an upload the client then
// sends n bytes and closes its send side; for a download it closes it after the response:
//
//	'D' n   the server answers n bytes and closes (a 1 KiB GET is 'D' 1024)
//	'U' n   the server reads to the end and answers the count it got, in decimal
//
// One thing differs from quic-go's defaults, because a floor should not pay for it: quic-go
// grants a new stream (a MAX_STREAMS frame, sent at once) every time one of the peer's streams
// completes, which costs a datagram per request plus the ACK it draws (4 datagrams per small
// request instead of 2, measured). The server sets RequireStreamCreditRelease and releases
// credit in batches of rawCreditBatch streams.
//
// The server runs in the runner for throughput (both ends in one process) and in a child
// process for latency (so its CPU can be read from /proc like kasd's).
const rawALPN = "qkas-bench-raw"

// rawCreditBatch: completed streams whose credit the server returns to the client at once (at
// most a quarter of Config.MaxIncomingStreams).
const rawCreditBatch = 64

// rawServer serves the protocol above. close stops it and waits for every goroutine it started.
type rawServer struct {
	pc    net.PacketConn
	tr    *quicgo.Transport
	ln    *quicgo.Listener
	batch int
	wg    sync.WaitGroup // the accept loop and per-connection/stream goroutines
}

// listenRaw serves the raw protocol on pc (which it owns from now on, also on error) with cfg
// plus batched stream credit.
func listenRaw(pc net.PacketConn, cert tls.Certificate, cfg quic.Config) (*rawServer, error) {
	if err := cfg.Validate(); err != nil {
		pc.Close()
		return nil, err
	}
	qcfg := cfg.QUICConfig()
	qcfg.RequireStreamCreditRelease = true
	r := &rawServer{pc: pc, tr: &quicgo.Transport{Conn: pc}, batch: int(min(rawCreditBatch, max(1, cfg.WithDefaults().MaxIncomingStreams/4)))}
	ln, err := r.tr.Listen(quic.ServerTLSConfig(cert, rawALPN), qcfg)
	if err != nil {
		r.tr.Close()
		pc.Close()
		return nil, err
	}
	r.ln = ln
	r.wg.Go(func() {
		for {
			qc, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			r.wg.Go(func() { r.serveConn(qc) })
		}
	})
	return r, nil
}

func (r *rawServer) serveConn(qc *quicgo.Conn) {
	var mu sync.Mutex
	var done []*quicgo.Stream // guarded by mu: handled streams whose credit is not released yet
	release := func(s *quicgo.Stream) {
		mu.Lock()
		defer mu.Unlock()
		if done = append(done, s); len(done) >= r.batch {
			for _, d := range done {
				d.ReleaseStreamCredit()
			}
			done = done[:0]
		}
	}
	for {
		s, err := qc.AcceptStream(context.Background())
		if err != nil {
			return
		}
		r.wg.Go(func() {
			defer release(s)
			var h [9]byte
			if _, err := io.ReadFull(s, h[:]); err != nil {
				s.CancelRead(1)
				s.CancelWrite(1)
				return
			}
			n := int64(binary.BigEndian.Uint64(h[1:]))
			switch h[0] {
			case 'D':
				_ = writeZeros(s, n)
				_ = s.Close()
				// Read the client's FIN: a stream whose receive side is never read to its
				// end never completes, and its credit would never return to the client.
				_, _ = io.Copy(io.Discard, s)
			case 'U':
				got, _ := io.Copy(io.Discard, s)
				_, _ = s.Write([]byte(strconv.FormatInt(got, 10)))
				_ = s.Close()
			default:
				s.CancelRead(1)
				s.CancelWrite(1)
			}
		})
	}
}

func (r *rawServer) addr() string { return r.pc.LocalAddr().String() }

// close destroys the server's connections (the client sees them end) and waits.
func (r *rawServer) close() {
	_ = r.ln.Close()
	_ = r.tr.Close()
	_ = r.pc.Close()
	r.wg.Wait()
}

// rawClient holds one connection to a rawServer.
type rawClient struct {
	dialer *quic.Dialer
	conn   *quicgo.Conn
}

// dialRaw connects to the raw server at addr from a socket in ns (nil: the runner's namespace).
func dialRaw(ctx context.Context, ns *netns, caFile, addr string) (*rawClient, error) {
	tlsConf, err := quic.ClientTLSConfig(caFile, "127.0.0.1", rawALPN)
	if err != nil {
		return nil, err
	}
	c := &rawClient{}
	if err := ns.do(func() (err error) {
		// Its socket belongs to ns. No UDP_GRO: the floor is quic-go's own reading path (the
		// raw server's socket is quic-go's as well), and the routes are measured against it.
		c.dialer, err = quic.NewDialer(tlsConf, quic.Config{NoUDPGRO: true})
		return err
	}); err != nil {
		return nil, err
	}
	if c.conn, err = c.dialer.Dial(ctx, addr); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// transfer moves n bytes on a new stream; upload when up.
func (c *rawClient) transfer(ctx context.Context, up bool, n int64) error {
	s, err := c.conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	// Stream reads and writes do not watch ctx: cancelling the stream ends them.
	defer context.AfterFunc(ctx, func() { s.CancelRead(1); s.CancelWrite(1) })()
	var h [9]byte
	h[0] = 'D'
	if up {
		h[0] = 'U'
	}
	binary.BigEndian.PutUint64(h[1:], uint64(n))
	if _, err := s.Write(h[:]); err != nil {
		return err
	}
	if up {
		if err := writeZeros(s, n); err != nil {
			return err
		}
		_ = s.Close()
		ack, err := io.ReadAll(s)
		if err != nil {
			return err
		}
		if string(ack) != strconv.FormatInt(n, 10) {
			return fmt.Errorf("raw upload: server got %s of %d", ack, n)
		}
		return nil
	}
	// The server does not wait for the request's FIN: sending it after the response lets it
	// ride with the response's ACK, where closing right after the Write usually costs a
	// datagram of its own (and an immediate ACK for it). 2 datagrams per small request.
	got, err := io.Copy(io.Discard, s)
	_ = s.Close()
	if err == nil && got != n {
		err = fmt.Errorf("raw download: got %d of %d", got, n)
	}
	return err
}

// get is the raw counterpart of a small GET: one stream, n bytes back. Errors are classified
// like load.Get's.
func (c *rawClient) get(n int64) load.Func {
	return func(ctx context.Context) error {
		if err := c.transfer(ctx, false, n); err != nil {
			return errors.New(load.ErrorKind(err))
		}
		return nil
	}
}

func (c *rawClient) close() {
	if c.conn != nil {
		_ = c.conn.CloseWithError(quic.ConnCodeNoError, "")
	}
	if c.dialer != nil {
		_ = c.dialer.Close()
	}
}

// rawQUIC is a rawServer and its client in the runner process (the throughput baseline).
type rawQUIC struct {
	srv *rawServer
	*rawClient
}

func (e *env) startRawQUIC(ctx context.Context) (*rawQUIC, error) {
	cert, err := tls.LoadX509KeyPair(e.certFile, e.keyFile)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	srv, err := listenRaw(pc, cert, quic.Config{})
	if err != nil {
		return nil, err
	}
	r := &rawQUIC{srv: srv}
	if r.rawClient, err = dialRaw(ctx, nil, e.caFile, r.srv.addr()); err != nil {
		r.srv.close()
		return nil, err
	}
	return r, nil
}

func (r *rawQUIC) close() {
	r.rawClient.close()
	r.srv.close()
}

// zeroChunk is read-only: every writer of zeros shares it.
var zeroChunk = make([]byte, 32<<10)

// writeZeros writes n zero bytes to w.
func writeZeros(w io.Writer, n int64) error {
	for n > 0 {
		k, err := w.Write(zeroChunk[:min(n, int64(len(zeroChunk)))])
		n -= int64(k)
		if err != nil {
			return err
		}
	}
	return nil
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
