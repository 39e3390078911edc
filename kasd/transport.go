package kasd

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/quic"
)

// Transports
//
// Agents connect over QUIC (UDP) or, where UDP is blocked, over the same QUIC connection
// carried by TLS/TCP (quic.TCPListener; docs/transport.md). Both give the Server a
// *quicgo.Conn, so authentication, identity, the registry, routing, limits, metrics and
// drain are the same code; only the connection's remote address tells them apart
// (quic.TransportOf), for the status page, GET /api/v1/agents and kasd_agent_connections.

// quicAcceptor is what acceptLoop accepts connections from: a *quic.Listener or a
// *quic.TCPListener.
type quicAcceptor interface {
	Accept(ctx context.Context) (*quicgo.Conn, error)
}

// ServeAgentsTCP accepts agent connections carried over TCP from ln until ctx ends or ln is
// closed, exactly as ServeAgents does for QUIC over UDP; it returns nil in those cases.
func (s *Server) ServeAgentsTCP(ctx context.Context, ln *quic.TCPListener) error {
	return s.acceptLoop(ctx, ln, "agent tcp", s.serveAgentConn)
}

// transports are the values of the transport label, in the order they are exported.
var transports = []string{"quic", "tcp"}

// transportConnsCollector exports kasd_agent_connections{transport}: live agent connections
// by transport, counted when scraped.
type transportConnsCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func newTransportConnsCollector(s *Server) *transportConnsCollector {
	return &transportConnsCollector{s: s, desc: prometheus.NewDesc("kasd_agent_connections",
		"Live agent connections to this kasd, by transport (quic, or tcp: QUIC carried over TCP where UDP is blocked).",
		[]string{"transport"}, nil)}
}

func (c *transportConnsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *transportConnsCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, ac := range c.s.table.all() {
		counts[quic.TransportOf(ac.qc.RemoteAddr())]++
	}
	for _, t := range transports {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[t]), t)
	}
}

// closedBeforeHello reports a connection the agent closed without error before opening its
// control stream: agentd's QUIC probe while it runs over TCP (it checks that a QUIC handshake
// completes, then closes with quic.ConnCodeNoError). Counted as
// kasd_agent_connections_total{result="probe"}, neither logged nor a limit rejection.
func closedBeforeHello(qc *quicgo.Conn) bool {
	var appErr *quicgo.ApplicationError
	err := context.Cause(qc.Context())
	return errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == quic.ConnCodeNoError
}
