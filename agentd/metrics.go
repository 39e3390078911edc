package agentd

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/internal/upstream"
	"github.com/qkas/qkas/quic"
)

type metrics struct {
	connections     prometheus.Gauge
	connectAttempts *prometheus.CounterVec
	tlsResumptions  prometheus.Counter
	goAways         prometheus.Counter
	openStreams     prometheus.Gauge
	rejections      *prometheus.CounterVec
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	serviceErrors   *prometheus.CounterVec
	gitlabRequests  *prometheus.CounterVec // module, code
	connectFailures *prometheus.CounterVec // code (ConnectCode, connerr.go)
	configReloads   *prometheus.CounterVec // result: ok, unchanged, error (reload.go)
	limits          *prometheus.CounterVec // reason
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentd_connections", Help: "Established connections to kasd.",
		}),
		connectAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentd_connect_attempts_total", Help: "Attempts to connect to kasd by result (ok, or the error code).",
		}, []string{"result"}),
		tlsResumptions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentd_tls_resumptions_total", Help: "Connections to kasd whose TLS handshake resumed a session from an earlier connection (kasd skipped its certificate and signature, this agent the chain's verification).",
		}),
		goAways: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentd_goaways_total", Help: "GoAway messages received from kasd (kasd draining).",
		}),
		openStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentd_open_streams", Help: "Request streams currently open.",
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentd_stream_rejections_total", Help: "Request streams refused before proxying, by reason.",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentd_requests_total", Help: "Proxied requests by service and HTTP status code.",
		}, []string{"service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "agentd_request_duration_seconds", Help: "Time to serve a proxied request, until the response ends.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"service"}),
		serviceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentd_service_errors_total", Help: "Requests whose service could not be reached or failed, by service.",
		}, []string{"service"}),
	}
	m.gitlabRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentd_gitlab_requests_total", Help: "Requests to GitLab's modules endpoint through kasd, by module and HTTP status code.",
	}, []string{"module", "code"})
	m.connectFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentd_connect_failures_total", Help: "Failed attempts to connect to kasd, by error code (the error_code of the log line; README's agentd error codes).",
	}, []string{"code"})
	m.configReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentd_config_reloads_total", Help: "Reloads of the agent's services (SIGHUP or a config file change) by result: ok, unchanged, or error (the old services stay).",
	}, []string{"result"})
	m.limits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentd_limit_rejections_total", Help: "Limits a service's answer hit, by reason: response_head_too_large (a head over 64 KiB or 512 fields, or over what agentd reads; the client got a 502 service_unavailable), too_many_informational (more than 8 interim responses; 502), response_trailers_too_large (trailers over 32 KiB, 64 KiB encoded or 512 fields; the response is cut).",
	}, []string{"reason"})
	reg.MustRegister(m.connectFailures, m.configReloads, m.limits)
	reg.MustRegister(m.connections, m.connectAttempts, m.tlsResumptions, m.goAways, m.openStreams, m.rejections,
		m.requests, m.duration, m.serviceErrors, m.gitlabRequests)
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "agentd_quic_transient_send_errors_total",
		Help: "Datagrams the kernel refused to send with EPERM (a local firewall), ENOBUFS or EAGAIN: counted as loss, which QUIC recovers from, instead of closing the connection.",
	}, func() float64 { return float64(quic.TransientSendErrors()) }))
	return m
}

func (m *metrics) observe(service string, status int, d time.Duration) {
	m.requests.WithLabelValues(service, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(service).Observe(d.Seconds())
}

// countLimit counts err in agentd_limit_rejections_total when it says a service's answer hit a
// limit (internal/upstream's typed errors).
func (m *metrics) countLimit(err error) {
	switch {
	case errors.Is(err, upstream.ErrResponseHeadTooLarge):
		m.limits.WithLabelValues("response_head_too_large").Inc()
	case errors.Is(err, upstream.ErrTooManyInformational):
		m.limits.WithLabelValues("too_many_informational").Inc()
	case errors.Is(err, upstream.ErrResponseTrailersTooLarge):
		m.limits.WithLabelValues("response_trailers_too_large").Inc()
	}
}
