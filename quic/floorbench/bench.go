//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/quic"
)

const alpn = "qkas-floorbench"

// Config is one floorbench run. Zero fields take the defaults in withDefaults.
type Config struct {
	// QUIC is qkas's transport configuration, used on both ends. Zero fields take qkas's
	// defaults.
	QUIC quic.Config
	// AckDelay, if not zero, sets quicgo.Config.MaxAckDelay on both ends: the longest an
	// endpoint delays an ACK, advertised to the peer as max_ack_delay (plus 1ms timer
	// granularity). Only the patched quic-go in third_party/quic-go has the field; upstream
	// quic-go always uses 25ms (26ms advertised).
	AckDelay time.Duration
	// RequestSize and ResponseSize are the bytes sent on each stream before FIN by the
	// client and by the server. Defaults 100 and 1024.
	RequestSize, ResponseSize int
	// HandlerDelay is how long the server waits between reading a request and answering it,
	// as a backend would. Default 0.
	HandlerDelay time.Duration
	// Warmup requests run at concurrency 1 before measuring. Default 2000.
	Warmup int
	// Requests is the number of sequential requests whose latency is measured. Default 20000.
	Requests int
	// Concurrency and LoadDuration shape the CPU phase. Defaults 64 and 3s; a negative
	// Concurrency skips the phase.
	Concurrency  int
	LoadDuration time.Duration
	// ServerNetns and ClientNetns name network namespaces (/run/netns/NAME) in which the
	// server's and the client's sockets are opened. Default "": this process's namespace.
	ServerNetns, ClientNetns string
	// ListenAddr is the server's UDP and TCP listen address. Default ":0", as kasd listens.
	ListenAddr string
	// DialHost is the address the client dials (with the server's port). Default 127.0.0.1.
	DialHost string
	// TCP also measures the TCP baseline (the c1 exchange over one TCP connection).
	TCP bool
}

func (c Config) withDefaults() Config {
	set := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	set(&c.RequestSize, 100)
	set(&c.ResponseSize, 1024)
	set(&c.Warmup, 2000)
	set(&c.Requests, 20000)
	set(&c.Concurrency, 64)
	if c.LoadDuration == 0 {
		c.LoadDuration = 3 * time.Second
	}
	if c.ListenAddr == "" {
		c.ListenAddr = ":0"
	}
	if c.DialHost == "" {
		c.DialHost = "127.0.0.1"
	}
	return c
}

// Latency summarizes a set of request latencies.
type Latency struct {
	N                   int
	P50, P99, P999, Max time.Duration
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	return Latency{N: len(d), P50: q(0.50), P99: q(0.99), P999: q(0.999), Max: d[len(d)-1]}
}

// Datagrams per request, by direction.
type Datagrams struct{ C2S, S2C float64 }

func (d Datagrams) Total() float64 { return d.C2S + d.S2C }

// Result is what one run measured.
type Result struct {
	Patched  bool // the quic-go in this binary has Config.MaxAckDelay (third_party patch)
	GSO      bool // quic-go reports GSO on the client's connection
	C1       Latency
	C1CPU    time.Duration // user+system CPU of the process per request at concurrency 1
	C1Dgrams Datagrams
	TCP      Latency // zero unless Config.TCP

	LoadRequests  int
	LoadPerSecond float64
	LoadCPU       time.Duration // user+system CPU of the process per request
	LoadDgrams    Datagrams
}

// String is one line of key=value fields, microseconds for durations.
func (r Result) String() string {
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }
	f := []string{
		fmt.Sprintf("patched=%t gso=%t", r.Patched, r.GSO),
		fmt.Sprintf("c1_n=%d c1_p50_us=%s c1_p99_us=%s c1_p999_us=%s c1_max_us=%s", r.C1.N, us(r.C1.P50), us(r.C1.P99), us(r.C1.P999), us(r.C1.Max)),
		fmt.Sprintf("c1_cpu_us=%s c1_dg=%.2f c1_dg_c2s=%.2f c1_dg_s2c=%.2f", us(r.C1CPU), r.C1Dgrams.Total(), r.C1Dgrams.C2S, r.C1Dgrams.S2C),
	}
	if r.TCP.N > 0 {
		f = append(f, fmt.Sprintf("tcp_p50_us=%s tcp_p99_us=%s tcp_p999_us=%s added_p50_us=%s",
			us(r.TCP.P50), us(r.TCP.P99), us(r.TCP.P999), us(r.C1.P50-r.TCP.P50)))
	}
	if r.LoadRequests > 0 {
		f = append(f, fmt.Sprintf("load_req_s=%.0f load_cpu_us=%s load_dg=%.2f load_dg_c2s=%.2f load_dg_s2c=%.2f",
			r.LoadPerSecond, us(r.LoadCPU), r.LoadDgrams.Total(), r.LoadDgrams.C2S, r.LoadDgrams.S2C))
	}
	return strings.Join(f, " ")
}

// setAckDelay sets quicgo.Config.MaxAckDelay. It goes through reflection because the field
// exists only in the patched quic-go, and this harness builds against both.
func setAckDelay(c *quicgo.Config, d time.Duration) error {
	f := reflect.ValueOf(c).Elem().FieldByName("MaxAckDelay")
	if !f.IsValid() {
		return errors.New("-ack-delay needs the patched quic-go (third_party/quic-go): upstream has no Config.MaxAckDelay")
	}
	f.Set(reflect.ValueOf(d))
	return nil
}

func hasAckDelayField() bool {
	_, ok := reflect.TypeFor[quicgo.Config]().FieldByName("MaxAckDelay")
	return ok
}

// bench is one run's server and client.
type bench struct {
	cfg Config

	serverPC, clientPC *countingConn
	serverTr, clientTr *quicgo.Transport
	ln                 *quicgo.Listener
	conn               *quicgo.Conn // the client's connection
	tcpLn              net.Listener
	tcpConn            net.Conn // the client's TCP connection

	resp []byte
	wg   sync.WaitGroup // server goroutines
}

// Run runs every phase and returns what it measured.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.QUIC.Validate(); err != nil {
		return Result{}, err
	}
	b, err := startBench(ctx, cfg)
	if err != nil {
		return Result{}, err
	}
	defer b.close()
	res := Result{Patched: hasAckDelayField(), GSO: b.conn.ConnectionState().GSO}
	if _, err = b.sequential(ctx, cfg.Warmup); err != nil {
		return res, fmt.Errorf("warmup: %w", err)
	}
	sent0, cpu0 := b.sent(), cpuTime()
	lat, err := b.sequential(ctx, cfg.Requests)
	if err != nil {
		return res, fmt.Errorf("c=1: %w", err)
	}
	res.C1CPU = (cpuTime() - cpu0) / time.Duration(cfg.Requests)
	res.C1 = summarize(lat)
	res.C1Dgrams = b.sent().sub(sent0).per(cfg.Requests)
	if cfg.Concurrency > 0 && cfg.LoadDuration > 0 {
		l, err := b.load(ctx, 0)
		if err != nil {
			return res, fmt.Errorf("load: %w", err)
		}
		res.LoadRequests = l.requests
		res.LoadPerSecond = float64(l.requests) / l.elapsed.Seconds()
		res.LoadCPU = l.cpu / time.Duration(max(l.requests, 1))
		res.LoadDgrams = l.sent.per(l.requests)
	}
	if cfg.TCP {
		if res.TCP, err = b.tcp(ctx); err != nil {
			return res, fmt.Errorf("tcp: %w", err)
		}
	}
	return res, nil
}

// startBench starts the server and connects the client; cfg has its defaults applied.
func startBench(ctx context.Context, cfg Config) (*bench, error) {
	b := &bench{cfg: cfg, resp: bytes.Repeat([]byte("r"), cfg.ResponseSize)}
	if err := b.start(ctx); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *bench) start(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "floorbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cert, caFile, err := quic.DevCertificate(dir, nil)
	if err != nil {
		return err
	}
	serverTLS := quic.ServerTLSConfig(cert, alpn)
	clientTLS, err := quic.ClientTLSConfig(caFile, "localhost", alpn)
	if err != nil {
		return err
	}
	qc := b.cfg.QUIC.QUICConfig()
	if b.cfg.AckDelay != 0 {
		if err := setAckDelay(qc, b.cfg.AckDelay); err != nil {
			return err
		}
	}

	listenAddr, err := net.ResolveUDPAddr("udp", b.cfg.ListenAddr)
	if err != nil {
		return err
	}
	err = inNetns(b.cfg.ServerNetns, func() error {
		pc, err := net.ListenUDP("udp", listenAddr)
		if err != nil {
			return err
		}
		b.serverPC = newCountingConn(pc)
		if !b.cfg.TCP {
			return nil
		}
		host, _, _ := net.SplitHostPort(b.cfg.ListenAddr)
		b.tcpLn, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
		return err
	})
	if err != nil {
		return fmt.Errorf("server sockets: %w", err)
	}
	// As quic.ListenPacketConn does.
	b.serverTr = &quicgo.Transport{Conn: b.serverPC, StatelessResetKey: b.cfg.QUIC.StatelessResetKey}
	if b.ln, err = b.serverTr.Listen(tlsForQUIC(serverTLS), qc); err != nil {
		return err
	}
	b.wg.Go(func() { b.serve(ctx) })
	if b.tcpLn != nil {
		b.wg.Go(b.serveTCP)
	}

	err = inNetns(b.cfg.ClientNetns, func() error {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{}) // as quic.NewDialer does
		if err != nil {
			return err
		}
		b.clientPC = newCountingConn(pc)
		if b.tcpLn == nil {
			return nil
		}
		b.tcpConn, err = net.Dial("tcp", net.JoinHostPort(b.cfg.DialHost, portOf(b.tcpLn.Addr())))
		return err
	})
	if err != nil {
		return fmt.Errorf("client sockets: %w", err)
	}
	// As quic.Dialer does.
	b.clientTr = &quicgo.Transport{Conn: b.clientPC, StatelessResetKey: b.cfg.QUIC.StatelessResetKey}
	raddr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(b.cfg.DialHost, portOf(b.serverPC.LocalAddr())))
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b.conn, err = b.clientTr.Dial(dctx, raddr, tlsForQUIC(clientTLS), qc)
	return err
}

// tlsForQUIC applies what quic.Listen and quic.NewDialer apply: TLS 1.3 at least.
func tlsForQUIC(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.MinVersion = tls.VersionTLS13
	return c
}

func portOf(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return port
}

// close tears down in order and waits for the server's goroutines.
func (b *bench) close() {
	if b.conn != nil {
		b.conn.CloseWithError(quic.ConnCodeNoError, "")
	}
	if b.tcpConn != nil {
		b.tcpConn.Close()
	}
	if b.ln != nil {
		b.ln.Close()
	}
	if b.tcpLn != nil {
		b.tcpLn.Close()
	}
	for _, tr := range []*quicgo.Transport{b.clientTr, b.serverTr} {
		if tr != nil {
			tr.Close()
		}
	}
	for _, pc := range []*countingConn{b.clientPC, b.serverPC} {
		if pc != nil {
			pc.Close()
		}
	}
	b.wg.Wait()
}

// serve accepts connections, and on each the request streams: read to FIN, answer, FIN.
func (b *bench) serve(ctx context.Context) {
	for {
		conn, err := b.ln.Accept(ctx)
		if err != nil {
			return
		}
		b.wg.Go(func() {
			defer conn.CloseWithError(quic.ConnCodeNoError, "")
			for {
				str, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				b.wg.Go(func() {
					if _, err := io.Copy(io.Discard, str); err != nil {
						str.CancelWrite(quic.StreamCodeInternal)
						return
					}
					if b.cfg.HandlerDelay > 0 {
						time.Sleep(b.cfg.HandlerDelay)
					}
					if _, err := str.Write(b.resp); err != nil {
						return
					}
					str.Close()
				})
			}
		})
	}
}

func (b *bench) serveTCP() {
	conn, err := b.tcpLn.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	req := make([]byte, b.cfg.RequestSize)
	for {
		if _, err := io.ReadFull(conn, req); err != nil {
			return
		}
		if b.cfg.HandlerDelay > 0 {
			time.Sleep(b.cfg.HandlerDelay)
		}
		if _, err := conn.Write(b.resp); err != nil {
			return
		}
	}
}

// request is one stream: the request and FIN, then the whole response up to FIN.
func (b *bench) request(ctx context.Context, req, buf []byte) error {
	str, err := b.conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if _, err := str.Write(req); err != nil {
		return err
	}
	if err := str.Close(); err != nil {
		return err
	}
	if _, err := io.ReadFull(str, buf); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	if n, err := str.Read(buf[:1]); n != 0 || err != io.EOF {
		return fmt.Errorf("response longer than %d bytes or no FIN: %d, %v", len(buf), n, err)
	}
	if buf[0] != b.resp[0] || buf[len(buf)-1] != b.resp[len(b.resp)-1] {
		return errors.New("response corrupted")
	}
	return nil
}

// sequential runs n requests one after the other and returns their latencies.
func (b *bench) sequential(ctx context.Context, n int) ([]time.Duration, error) {
	req := bytes.Repeat([]byte("q"), b.cfg.RequestSize)
	buf := make([]byte, b.cfg.ResponseSize)
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if err := b.request(ctx, req, buf); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}

// loadResult is what a load phase measured.
type loadResult struct {
	requests int
	elapsed  time.Duration
	cpu      time.Duration // user+system CPU of the process
	sent     counts
}

// load runs Concurrency workers, for n requests in all or, if n is 0, for LoadDuration.
func (b *bench) load(ctx context.Context, n int) (loadResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		started, done atomic.Int64
		stop          atomic.Bool
		firstErr      error
		errOnce       sync.Once
		wg            sync.WaitGroup
	)
	more := func() bool {
		if n > 0 {
			return started.Add(1) <= int64(n)
		}
		return !stop.Load()
	}
	sent0, cpu0, t0 := b.sent(), cpuTime(), time.Now()
	for range b.cfg.Concurrency {
		wg.Go(func() {
			req := bytes.Repeat([]byte("q"), b.cfg.RequestSize)
			buf := make([]byte, b.cfg.ResponseSize)
			for more() {
				if err := b.request(ctx, req, buf); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				done.Add(1)
			}
		})
	}
	if n == 0 {
		select {
		case <-time.After(b.cfg.LoadDuration):
		case <-ctx.Done():
		}
		stop.Store(true)
	}
	wg.Wait()
	r := loadResult{requests: int(done.Load()), elapsed: time.Since(t0), cpu: cpuTime() - cpu0, sent: b.sent().sub(sent0)}
	return r, firstErr
}

func (b *bench) tcp(ctx context.Context) (Latency, error) {
	req := bytes.Repeat([]byte("q"), b.cfg.RequestSize)
	buf := make([]byte, b.cfg.ResponseSize)
	lat := make([]time.Duration, 0, b.cfg.Requests)
	for i := range b.cfg.Warmup + b.cfg.Requests {
		if ctx.Err() != nil {
			return Latency{}, ctx.Err()
		}
		start := time.Now()
		if _, err := b.tcpConn.Write(req); err != nil {
			return Latency{}, err
		}
		if _, err := io.ReadFull(b.tcpConn, buf); err != nil {
			return Latency{}, err
		}
		if i >= b.cfg.Warmup {
			lat = append(lat, time.Since(start))
		}
	}
	return summarize(lat), nil
}

// counts is the datagrams sent by each end so far.
type counts struct{ client, server uint64 }

func (b *bench) sent() counts {
	return counts{client: b.clientPC.sent.Load(), server: b.serverPC.sent.Load()}
}

func (c counts) sub(o counts) counts { return counts{c.client - o.client, c.server - o.server} }

func (c counts) per(n int) Datagrams {
	if n == 0 {
		return Datagrams{}
	}
	return Datagrams{C2S: float64(c.client) / float64(n), S2C: float64(c.server) / float64(n)}
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
