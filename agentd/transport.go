package agentd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/quic"
)

// Transports
//
// agentd reaches kasd over QUIC (UDP) or, where UDP is blocked, over the same QUIC connection
// carried by TLS/TCP (quic.TCPDialer; docs/transport.md), optionally through an HTTP CONNECT
// proxy. Everything above the dial is the same code: the connection is a *quicgo.Conn either
// way.
//
// In auto mode (the default) a dial tries QUIC first; when no QUIC handshake completes within
// FallbackAfter, or the network reports UDP unreachable, it dials TCP to the same address and
// the agent stays on TCP: later dials go to TCP directly (falling back to QUIC only if TCP
// fails). While on TCP, one goroutine (owned by Run) tries a QUIC handshake every
// ProbeInterval (jittered ±25%); when one completes, the agent is back on QUIC and every TCP
// connection is replaced make before break, like a reload's re-announce (reload.go): the slot
// dials QUIC while the TCP connection keeps serving, then drains it. A QUIC dial that fails
// then falls back to TCP again, so the slot is never left without a connection.
//
// A slow handshake is not taken for blocked UDP within quicTrust of kasd last answering over
// QUIC (a connection made, a refusal, a stateless reset, a close from kasd): after a kasd
// restart every agent redials at once, the handshakes queue behind kasd's CPU and its gate, and
// agents that took the wait for a firewall moved to TCP by the thousand (2,007 of 10,000 in
// make bench-scale), stayed there for ProbeInterval and left half-done handshakes holding the
// gate's places. Within the window the dial waits for QUIC's own handshake timeout instead of
// FallbackAfter, and a timeout is an ordinary failed attempt (counted in
// agentd_transport_fallbacks_withheld_total); a network that starts dropping UDP is noticed once
// the window has passed, or at once when it answers with ICMP unreachable.

// Transport modes (Config.Transport.Mode, agentd --transport).
const (
	TransportAuto = "auto"
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// TransportConfig chooses how the agent reaches kasd. Zero value: auto, 3s, 5m, no proxy.
type TransportConfig struct {
	// Mode is "auto" (QUIC, falling back to TCP and returning by itself), "quic" (never TCP) or
	// "tcp" (never QUIC). Default auto.
	Mode string
	// FallbackAfter is how long, in auto mode, a QUIC handshake may take before the agent
	// dials TCP instead. Default 3s.
	FallbackAfter time.Duration
	// ProbeInterval is how often, in auto mode while on TCP, the agent tries a QUIC handshake
	// (jittered ±25%). Default 5m.
	ProbeInterval time.Duration
	// Proxy returns the HTTP proxy (http:// or https://, user:password@ for basic auth) through
	// which TCP connections reach the kasd URL given (https://host:port), nil for none. QUIC
	// never goes through a proxy. Default: none; agentd's main sets it from HTTPS_PROXY,
	// NO_PROXY and --proxy-url.
	Proxy func(*url.URL) (*url.URL, error)
	// TCPPort, if not 0, is the TCP port to dial instead of the kasd address's port. Default 0
	// (kasd listens for TCP on the same port number as for QUIC).
	TCPPort int
	// DialUDPProbe opens the connected UDP socket through which, in auto mode, the network's
	// refusal of UDP to kasd is noticed (watchUDPUnreachable). Default net.DialUDP; tests that
	// keep the agent's sockets in another network namespace open it there.
	DialUDPProbe func(raddr *net.UDPAddr) (*net.UDPConn, error)
}

// DefaultFallbackAfter and DefaultProbeInterval are TransportConfig's defaults.
const (
	DefaultFallbackAfter = 3 * time.Second
	DefaultProbeInterval = 5 * time.Minute
)

// quicTrust is how long after kasd last answered over QUIC a QUIC handshake that times out is
// taken for an overloaded kasd, not for a network dropping UDP (see Transports above).
const quicTrust = time.Minute

func (c TransportConfig) withDefaults() TransportConfig {
	if c.Mode == "" {
		c.Mode = TransportAuto
	}
	if c.FallbackAfter == 0 {
		c.FallbackAfter = DefaultFallbackAfter
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	return c
}

func (c TransportConfig) validate() []error {
	var errs []error
	switch c.Mode {
	case TransportAuto, TransportQUIC, TransportTCP:
	default:
		errs = append(errs, fmt.Errorf("transport must be auto, quic or tcp, got %q", c.Mode))
	}
	if c.FallbackAfter < 0 || c.ProbeInterval < 0 {
		errs = append(errs, errors.New("quic fallback time and probe interval must be positive"))
	}
	if c.TCPPort < 0 || c.TCPPort > 65535 {
		errs = append(errs, fmt.Errorf("tcp port %d out of range", c.TCPPort))
	}
	return errs
}

// transports is the agent's transport state: the TCP dialer, whether auto mode is on TCP, and
// the probe that brings it back.
type transports struct {
	cfg TransportConfig
	tcp *quic.TCPDialer
	log zerolog.Logger

	fallbacks *prometheus.CounterVec // reason
	withheld  prometheus.Counter
	returns   prometheus.Counter
	probes    *prometheus.CounterVec // result

	mu    sync.Mutex // guards the fields below
	onTCP bool
	// back is closed when a probe finds QUIC working again: the TCP connections made since the
	// fallback (which hold it) move back. Replaced at each fallback.
	back chan struct{}
	last target // the address of the last fallback, which the probe dials

	wake chan struct{} // signalled at each fallback: the probe loop starts its timer
	// quicSeen is when kasd last answered over QUIC (UDP): a connection made, or a dial or
	// connection ended by a packet from kasd (quicAnswered).
	quicSeen time.Time
}

// sawQUIC records that kasd answered over QUIC (UDP) at now.
func (tr *transports) sawQUIC(now time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.quicSeen = later(tr.quicSeen, now)
}

// quicTrusted reports whether kasd answered over QUIC within quicTrust before now.
func (tr *transports) quicTrusted(now time.Time) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return !tr.quicSeen.IsZero() && now.Sub(tr.quicSeen) < quicTrust
}

// quicAnswered reports whether err, which ended a QUIC dial or connection, came in a packet
// from kasd: a stateless reset, a CONNECTION_CLOSE (a refusal before TLS, a close by kasd), a
// version negotiation. UDP reached kasd and came back.
func quicAnswered(err error) bool {
	if _, ok := errors.AsType[*quicgo.StatelessResetError](err); ok {
		return true
	}
	if te, ok := errors.AsType[*quicgo.TransportError](err); ok && te.Remote {
		return true
	}
	if ae, ok := errors.AsType[*quicgo.ApplicationError](err); ok && ae.Remote {
		return true
	}
	_, ok := errors.AsType[*quicgo.VersionNegotiationError](err)
	return ok
}

// fallBack says whether a QUIC dial that failed with err at now should go to TCP, and why;
// withheld is a handshake timeout not taken for blocked UDP because kasd answered over QUIC
// within quicTrust.
func (tr *transports) fallBack(err error, now time.Time) (reason string, ok, withheld bool) {
	reason, ok = fallbackReason(err)
	if ok && reason == "handshake_timeout" && tr.quicTrusted(now) {
		return reason, false, true
	}
	return reason, ok, false
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// startTransports builds the agent's transport state and, in auto mode, starts the QUIC probe in
// a goroutine added to wg (it returns when ctx ends). Close the result's TCP dialer after wg.
func (a *Agent) startTransports(ctx context.Context, dialer *quic.Dialer, tlsConf *tls.Config, wg *sync.WaitGroup) error {
	tcp, err := quic.NewTCPDialer(tlsConf, a.cfg.QUIC)
	if err != nil {
		return err
	}
	t := &transports{cfg: a.cfg.Transport, tcp: tcp, log: a.log, back: make(chan struct{}), wake: make(chan struct{}, 1)}
	t.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentd_transport_fallbacks_total",
		Help: "Times the agent fell back from QUIC to TCP (auto transport), by reason: handshake_timeout (no QUIC handshake within --quic-fallback-after), udp_unreachable (the network refused the UDP packets).",
	}, []string{"reason"})
	t.withheld = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "agentd_transport_fallbacks_withheld_total",
		Help: "QUIC handshakes that timed out within a minute of kasd answering over QUIC (auto transport): taken for an overloaded kasd, retried over QUIC instead of falling back to TCP.",
	})
	t.returns = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "agentd_transport_returns_total",
		Help: "Times a QUIC probe succeeded while the agent was on TCP, moving its connections back to QUIC.",
	})
	t.probes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentd_quic_probes_total", Help: "QUIC handshakes tried while on TCP, by result (ok, failed).",
	}, []string{"result"})
	byTransport := prometheus.NewDesc("agentd_transport_connections",
		"Established connections to kasd by transport: quic, or tcp (QUIC carried over TCP where UDP is blocked).", []string{"transport"}, nil)
	// An Agent runs once, so this registers once per registry.
	_ = a.cfg.Registerer.Register(t.fallbacks)
	_ = a.cfg.Registerer.Register(t.withheld)
	_ = a.cfg.Registerer.Register(t.returns)
	_ = a.cfg.Registerer.Register(t.probes)
	_ = a.cfg.Registerer.Register(&transportCollector{a: a, desc: byTransport})
	a.tr = t
	if t.cfg.Mode == TransportAuto {
		wg.Go(func() { t.probeLoop(ctx, dialer) })
	}
	return nil
}

// Transport reports how the agent reaches kasd now: "quic" or "tcp".
func (a *Agent) Transport() string {
	if a.tr == nil {
		return TransportQUIC
	}
	switch a.tr.cfg.Mode {
	case TransportTCP:
		return TransportTCP
	case TransportQUIC:
		return TransportQUIC
	}
	a.tr.mu.Lock()
	defer a.tr.mu.Unlock()
	if a.tr.onTCP {
		return TransportTCP
	}
	return TransportQUIC
}

// dialKasd opens a QUIC connection to t over the transport the configuration and the state
// say (see Transports above).
func (a *Agent) dialKasd(ctx context.Context, dialer *quic.Dialer, t target) (*quicgo.Conn, error) {
	tr := a.tr
	switch tr.cfg.Mode {
	case TransportQUIC:
		return dialer.DialUDP(ctx, t.addr, t.serverName)
	case TransportTCP:
		return tr.dialTCP(ctx, t)
	}
	tr.mu.Lock()
	onTCP := tr.onTCP
	tr.mu.Unlock()
	if onTCP {
		qc, err := tr.dialTCP(ctx, t)
		if err == nil || ctx.Err() != nil {
			return qc, err
		}
		// TCP failed (the proxy is gone, TCP is blocked now): QUIC may work.
		qc, qerr := tr.dialQUIC(ctx, dialer, t)
		if qerr != nil {
			return nil, fmt.Errorf("over TCP: %w (and QUIC: %v)", err, qerr)
		}
		tr.setQUIC("tcp_failed")
		return qc, nil
	}
	qc, err := tr.dialQUIC(ctx, dialer, t)
	if err == nil || ctx.Err() != nil {
		return qc, err
	}
	reason, ok, withheld := tr.fallBack(err, time.Now())
	if withheld {
		tr.withheld.Inc()
		return nil, err
	}
	if !ok {
		return nil, err // a TLS or kasd refusal would be the same over TCP
	}
	qc, terr := tr.dialTCP(ctx, t)
	if terr != nil {
		switch classifyConnect(terr).Code {
		case ConnectUnreachable, ConnectNoAnswer, ConnectDNS, ConnectOther:
			// Nothing listens for TCP (an older kasd, TCP blocked too): the QUIC failure is
			// what to fix.
			return nil, fmt.Errorf("%w (TCP fallback: %v)", err, terr)
		}
		return nil, fmt.Errorf("QUIC: %v; TCP fallback: %w", err, terr) // the proxy, TLS, kasd
	}
	tr.setTCP(reason, t, err)
	return qc, nil
}

// dialQUIC dials QUIC, giving up after FallbackAfter, or at once in auto mode when the network
// answers that UDP to kasd is unreachable (watchUDPUnreachable).
func (tr *transports) dialQUIC(ctx context.Context, dialer *quic.Dialer, t target) (*quicgo.Conn, error) {
	uctx, refused := context.WithCancelCause(ctx)
	defer refused(nil)
	fallbackAfter := tr.cfg.FallbackAfter
	if tr.quicTrusted(time.Now()) {
		fallbackAfter = max(fallbackAfter, time.Hour) // QUIC's own handshake timeout ends it (quicTrust)
	}
	qctx, cancel := context.WithTimeoutCause(uctx, fallbackAfter, errQUICFallback)
	defer cancel()
	if tr.cfg.Mode == TransportAuto {
		done := make(chan struct{})
		go func() { // owned: waited for below, ends with qctx
			defer close(done)
			if err := watchUDPUnreachable(qctx, tr.cfg.DialUDPProbe, t.addr); err != nil {
				refused(err)
			}
		}()
		defer func() { cancel(); <-done }()
	}
	qc, err := dialer.DialUDP(qctx, t.addr, t.serverName)
	if err == nil || quicAnswered(err) {
		tr.sawQUIC(time.Now())
	}
	if err != nil && ctx.Err() == nil {
		if cause := context.Cause(qctx); errors.Is(cause, errQUICFallback) || errors.Is(cause, errUDPUnreachable) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return qc, err
}

// errQUICFallback marks a QUIC dial cut short by FallbackAfter.
var errQUICFallback = errors.New("no QUIC handshake within the fallback time")

// errUDPUnreachable marks a QUIC dial cut short because the network refused UDP to kasd.
var errUDPUnreachable = errors.New("the network refused UDP to kasd")

// udpProbeAfter is how long watchUDPUnreachable waits before its first probe, and
// udpProbeEvery how often it sends one after that. Most dials are over before the first: a
// handshake takes a few round trips. Probing from the start (every 250 ms, as before 2026-12-02)
// cost most in a reconnect storm, where thousands of dials wait on a busy kasd at once: each
// opened a socket and sent kasd four datagrams a second, and in a 10,000-agent restart the
// probes took ~12 % of the fleet simulator's CPU while handshakes piled up (docs/scale.md). A
// network that refuses UDP still sends the agent to TCP about a second after the dial began,
// well before --quic-fallback-after (3s).
const (
	udpProbeAfter = time.Second
	udpProbeEvery = time.Second
)

// watchUDPUnreachable tells, while ctx lasts, whether the network refuses UDP to addr. quic-go's
// socket is unconnected, and Linux reports ICMP errors (port or host unreachable, a firewall's
// reject) only to connected sockets, so a connected socket sends a one-byte datagram to addr,
// after udpProbeAfter and then every udpProbeEvery (kasd's QUIC stack drops datagrams that
// short unanswered), and reads: a refusal comes back as ECONNREFUSED, EHOSTUNREACH or
// ENETUNREACH, a local firewall's as EPERM.
// It returns that error wrapped in errUDPUnreachable, or nil when ctx ends first.
func watchUDPUnreachable(ctx context.Context, dial func(*net.UDPAddr) (*net.UDPConn, error), addr *net.UDPAddr) error {
	first := time.NewTimer(udpProbeAfter)
	select {
	case <-ctx.Done():
		first.Stop()
		return nil
	case <-first.C:
	}
	if dial == nil {
		dial = func(raddr *net.UDPAddr) (*net.UDPConn, error) { return net.DialUDP("udp", nil, raddr) }
	}
	c, err := dial(addr)
	if err != nil {
		if udpRefused(err) {
			return fmt.Errorf("%w: %w", errUDPUnreachable, err)
		}
		return nil
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var b [1]byte
	for ctx.Err() == nil {
		if _, err := c.Write(b[:]); udpRefused(err) {
			return fmt.Errorf("%w: %w", errUDPUnreachable, err)
		}
		c.SetReadDeadline(time.Now().Add(udpProbeEvery))
		if ctx.Err() != nil {
			return nil // the deadline above may have replaced the one AfterFunc set
		}
		if _, err := c.Read(b[:]); udpRefused(err) {
			return fmt.Errorf("%w: %w", errUDPUnreachable, err)
		}
	}
	return nil
}

// udpRefused reports whether err is the network refusing a UDP datagram.
func udpRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EPERM)
}

// fallbackReason says whether a failed QUIC dial should fall back to TCP, and why.
func fallbackReason(err error) (string, bool) {
	if errors.Is(err, errUDPUnreachable) || udpRefused(err) {
		return "udp_unreachable", true
	}
	_, hsTimeout := errors.AsType[*quicgo.HandshakeTimeoutError](err)
	_, idle := errors.AsType[*quicgo.IdleTimeoutError](err)
	if errors.Is(err, errQUICFallback) || hsTimeout || idle || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return "handshake_timeout", true
	}
	return "", false
}

// dialTCP dials t over TCP, through the proxy the configuration names for it.
func (tr *transports) dialTCP(ctx context.Context, t target) (*quicgo.Conn, error) {
	port := t.addr.Port
	if tr.cfg.TCPPort != 0 {
		port = tr.cfg.TCPPort
	}
	addr := &net.TCPAddr{IP: t.addr.IP, Port: port, Zone: t.addr.Zone}
	var dial func(context.Context) (net.Conn, error)
	if tr.cfg.Proxy != nil {
		host := t.serverName
		if host == "" {
			host = addr.IP.String()
		}
		proxyURL, err := tr.cfg.Proxy(&url.URL{Scheme: "https", Host: net.JoinHostPort(host, fmt.Sprint(port))})
		if err != nil {
			return nil, &proxyError{code: ConnectProxyUnreachable, err: fmt.Errorf("choosing a proxy: %w", err)}
		}
		if proxyURL != nil {
			dial = func(ctx context.Context) (net.Conn, error) { return dialConnect(ctx, proxyURL, addr.String()) }
		}
	}
	return tr.tcp.Dial(ctx, addr, t.serverName, dial)
}

// noteEnd records, in auto mode, that a QUIC (UDP) connection kasd ended itself (a GoAway, a
// close, a stateless reset after a restart) was kasd answering over QUIC: the redial that
// follows must not take a slow handshake for blocked UDP (quicTrust).
func (a *Agent) noteEnd(c *agentConn, reason string) {
	tr := a.tr
	if tr == nil || tr.cfg.Mode != TransportAuto || quic.TransportOf(c.qc.RemoteAddr()) == TransportTCP {
		return
	}
	if reason == "goaway" || quicAnswered(context.Cause(c.qc.Context())) {
		tr.sawQUIC(time.Now())
	}
}

// setTCP records a fallback to TCP.
func (tr *transports) setTCP(reason string, t target, err error) {
	tr.fallbacks.WithLabelValues(reason).Inc()
	tr.mu.Lock()
	was := tr.onTCP
	tr.onTCP, tr.last = true, t
	tr.mu.Unlock()
	if !was {
		tr.log.Warn().Err(err).Str("reason", reason).Str("kas_address", t.String()).Dur("probe_interval", tr.cfg.ProbeInterval).
			Msg("QUIC does not get through: connected over TCP instead; QUIC is probed in the background (docs/transport.md)")
	}
	select {
	case tr.wake <- struct{}{}:
	default:
	}
}

// setQUIC records that QUIC works again and tells the TCP connections to move back.
func (tr *transports) setQUIC(why string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !tr.onTCP {
		return
	}
	tr.onTCP = false
	close(tr.back)
	tr.back = make(chan struct{})
	tr.returns.Inc()
	tr.log.Info().Str("reason", why).Msg("QUIC gets through again: moving the connections back from TCP to QUIC (make before break)")
}

// backChan returns the channel that is closed when connections carried by qc's transport
// should move back to QUIC: nil for QUIC connections and outside auto mode.
func (a *Agent) backChan(qc *quicgo.Conn) <-chan struct{} {
	tr := a.tr
	if tr == nil || tr.cfg.Mode != TransportAuto || quic.TransportOf(qc.RemoteAddr()) != TransportTCP {
		return nil
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !tr.onTCP {
		// QUIC came back while this connection was being made: move it at once.
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return tr.back
}

// probeLoop tries a QUIC handshake every ProbeInterval (jittered) while the agent is on TCP,
// until ctx ends.
func (tr *transports) probeLoop(ctx context.Context, dialer *quic.Dialer) {
	for {
		tr.mu.Lock()
		onTCP := tr.onTCP
		tr.mu.Unlock()
		if !onTCP {
			select {
			case <-ctx.Done():
				return
			case <-tr.wake:
				continue
			}
		}
		d := time.Duration(float64(tr.cfg.ProbeInterval) * (0.75 + rand.Float64()/2))
		if sleep(ctx, d) != nil {
			return
		}
		tr.mu.Lock()
		onTCP, tgt := tr.onTCP, tr.last
		tr.mu.Unlock()
		if !onTCP {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, max(tr.cfg.FallbackAfter, time.Second))
		qc, err := dialer.DialUDP(pctx, tgt.addr, tgt.serverName)
		cancel()
		if err != nil {
			tr.probes.WithLabelValues("failed").Inc()
			tr.log.Debug().Err(err).Str("kas_address", tgt.String()).Msg("QUIC probe failed: staying on TCP")
			continue
		}
		// kasd counts a connection closed without error before its Hello as a probe.
		_ = qc.CloseWithError(quic.ConnCodeNoError, "probe")
		tr.probes.WithLabelValues("ok").Inc()
		tr.setQUIC("probe")
	}
}

// transportCollector exports agentd_transport_connections{transport}, read when scraped.
type transportCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func (c *transportCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *transportCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	c.a.mu.Lock()
	for _, ac := range c.a.slots {
		counts[quic.TransportOf(ac.qc.RemoteAddr())]++
	}
	c.a.mu.Unlock()
	for _, t := range []string{TransportQUIC, TransportTCP} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[t]), t)
	}
}

// transportOf names c's transport for logs.
func transportOf(qc *quicgo.Conn) string { return quic.TransportOf(qc.RemoteAddr()) }
