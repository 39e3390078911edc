package httpserve

import "github.com/prometheus/client_golang/prometheus"

// Limit-hit reasons, the values of the reason label.
const (
	ReasonReadHeaderTimeout = "read_header_timeout"
	ReasonIdleTimeout       = "idle_timeout"
	ReasonMaxHeaderBytes    = "max_header_bytes"
	ReasonMaxConnections    = "max_connections"
	// ReasonAmbiguousFraming: a request with a Transfer-Encoding on a connection that carried a
	// Content-Length field was answered with Connection: close (framing.go).
	ReasonAmbiguousFraming = "ambiguous_framing"
)

// Metrics counts limit hits and open connections for every server of one process.
// A nil *Metrics counts nothing.
type Metrics struct {
	hits  *prometheus.CounterVec
	conns *prometheus.GaugeVec
}

// NewMetrics registers <namespace>_http_limit_hits_total{server,reason} and
// <namespace>_http_connections{server} with reg (nil: not registered, still counted).
func NewMetrics(reg prometheus.Registerer, namespace string) (*Metrics, error) {
	m := &Metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "http_limit_hits_total",
			Help: "HTTP server limits hit: reason is read_header_timeout, idle_timeout, max_header_bytes, max_connections, or ambiguous_framing (a connection closed after a request with both Content-Length and Transfer-Encoding).",
		}, []string{"server", "reason"}),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "http_connections",
			Help: "Open connections of each HTTP server.",
		}, []string{"server"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.hits, m.conns} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *Metrics) hit(server, reason string) {
	if m != nil {
		m.hits.WithLabelValues(server, reason).Inc()
	}
}

func (m *Metrics) connections(server string) prometheus.Gauge {
	if m == nil {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "unused"})
	}
	return m.conns.WithLabelValues(server)
}
