package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// scaleOptions are the flags that size kasd for large fleets (docs/scale.md).
type scaleOptions struct {
	keepAlive     time.Duration // --agent-keep-alive-period
	busySilence   time.Duration // --agent-busy-silence
	idleTimeout   time.Duration // --agent-idle-timeout
	receiveBuffer int           // --udp-receive-buffer
	sendBuffer    int           // --udp-send-buffer
	gro           bool          // --udp-gro
}

func (s *scaleOptions) register(fs *flag.FlagSet) {
	fs.DurationVar(&s.keepAlive, "agent-keep-alive-period", quic.DefaultAgentKeepAlivePeriod,
		"keep-alive period expected from agents (agentd's --keep-alive-period must not be longer): agents send the keep-alive PINGs, kasd only acknowledges them, so each idle agent costs kasd one PING in and one ACK out per period (50,000 agents at 25s: 4,000 datagrams/s); an idle connection silent for a period plus 2s is probed, then closed; one a request is using is judged by --agent-busy-silence (docs/scale.md)")
	fs.DurationVar(&s.busySilence, "agent-busy-silence", time.Second,
		"how long an agent connection with requests in flight may receive nothing (a live agent acknowledges within milliseconds) before it is probed; unanswered for half as long again (at most 1s), it is closed and its unacknowledged requests go to the agent's other connections: a dead agent connection's requests fail over within 1.75 times this plus a tick (2s at 1s); raise it where agent processes can be starved of CPU for that long")
	fs.DurationVar(&s.idleTimeout, "agent-idle-timeout", quic.DefaultAgentMaxIdleTimeout,
		"QUIC idle timeout of agent connections (the smaller of kasd's and the agent's applies); must exceed --agent-keep-alive-period")
	fs.IntVar(&s.receiveBuffer, "udp-receive-buffer", quic.DefaultSocketBuffer,
		"UDP receive buffer (bytes) of the agent socket: SO_RCVBUFFORCE when permitted (CAP_NET_ADMIN), else up to net.core.rmem_max; what was obtained is logged and exported as kasd_udp_receive_buffer_bytes (negative: the system default)")
	fs.IntVar(&s.sendBuffer, "udp-send-buffer", quic.DefaultSocketBuffer,
		"UDP send buffer (bytes) of the agent socket: SO_SNDBUFFORCE when permitted, else up to net.core.wmem_max (kasd_udp_send_buffer_bytes)")
	fs.BoolVar(&s.gro, "udp-gro", true, "receive coalesced datagrams on the agent and peer sockets (UDP_GRO, Linux 5.0+): a peer's run of full-size packets is read in one system call and split again, which cuts the receive cost of bulk transfers (docs/performance.md); kasd_udp_gro says whether the kernel accepted")
}

// quic applies the scale flags to an agent listener's QUIC configuration. kasd sends no
// keep-alive PINGs of its own on agent connections: every agent sends them (its NAT binding
// needs them), and when both sides did, about half the periods carried two exchanges instead
// of one (docs/scale.md).
func (s *scaleOptions) quic(c quic.Config) quic.Config {
	c.KeepAlivePeriod, c.MaxIdleTimeout = s.keepAlive, s.idleTimeout
	c.PeerKeepsAlive = true
	c.SocketReceiveBuffer, c.SocketSendBuffer = s.receiveBuffer, s.sendBuffer
	c.NoUDPGRO = !s.gro
	return c
}

// reportSockets logs what the kernel granted each socket, warns when it is less than asked,
// and exports the sizes and the kernel's drop counts (kasd_udp_*).
func (s *scaleOptions) reportSockets(log zerolog.Logger, reg prometheus.Registerer, sockets map[string]quic.Socket) error {
	for name, sock := range sockets {
		b, err := sock.SocketBuffers()
		if err != nil {
			log.Warn().Err(err).Str("socket", name).Msg("cannot read the UDP socket's buffer sizes")
			continue
		}
		ev := log.Info()
		if (s.receiveBuffer > 0 && b.Receive < s.receiveBuffer) || (s.sendBuffer > 0 && b.Send < s.sendBuffer) {
			ev = log.Warn().Str("hint", "raise net.core.rmem_max and net.core.wmem_max, or grant CAP_NET_ADMIN (docs/scale.md); datagrams beyond the buffer are dropped under load")
		}
		ev.Str("socket", name).Int("receive_buffer", b.Receive).Int("send_buffer", b.Send).
			Bool("forced", b.ReceiveForced || b.SendForced).Int("wanted", max(s.receiveBuffer, s.sendBuffer)).
			Bool("gro", sock.GRO()).Msg("UDP socket buffers")
	}
	return reg.Register(quic.NewSocketCollector("kasd", sockets))
}

// watchTokens reloads the agent tokens file on SIGHUP and whenever it changes, keeping the
// previous file when the new one is bad (counted in kasd_agent_tokens_reloads_total). The
// goroutines belong to g and end with ctx. Without a tokens file (GitLab mode) it does nothing.
func watchTokens(ctx context.Context, g *errgroup.Group, authn kasd.AgentAuthenticator, log zerolog.Logger, reg prometheus.Registerer) {
	tfa, ok := authn.(kasd.TokenFileAuth)
	if !ok || tfa.Store.Path() == "" {
		return
	}
	store := tfa.Store
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kasd_agent_tokens", Help: "Tokens (entries) in the agent tokens file in use: an agent whose token is being rotated has two."},
			func() float64 { return float64(store.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kasd_agent_tokens_reloads_total", Help: "Reloads of the agent tokens file, by result (error: the previous file stays in use).", ConstLabels: prometheus.Labels{"result": "ok"}},
			func() float64 { ok, _ := store.ReloadCounts(); return float64(ok) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kasd_agent_tokens_reloads_total", Help: "Reloads of the agent tokens file, by result (error: the previous file stays in use).", ConstLabels: prometheus.Labels{"result": "error"}},
			func() float64 { _, failed := store.ReloadCounts(); return float64(failed) }),
	} {
		if err := reg.Register(c); err != nil {
			log.Warn().Err(err).Msg("agent tokens metrics not registered")
		}
	}
	report := func(trigger string) func(error) {
		return func(err error) {
			if err != nil {
				log.Error().Err(err).Str("trigger", trigger).Int("tokens", store.Len()).Msg("agent tokens file not reloaded: keeping the previous one")
				return
			}
			log.Info().Str("trigger", trigger).Int("tokens", store.Len()).Msg("agent tokens file reloaded")
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	g.Go(func() error {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
				report("SIGHUP")(store.Reload())
			}
		}
	})
	g.Go(func() error {
		if err := auth.WatchTokenStore(ctx, store, report("file change")); err != nil {
			// Not fatal: SIGHUP still reloads.
			log.Warn().Err(err).Msg("cannot watch the agent tokens file; reload it with SIGHUP")
		}
		return nil
	})
}
