package kasd

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/quic"
)

type metrics struct {
	agentConnections *prometheus.CounterVec
	tlsResumptions   prometheus.Counter
	silenceProbes    prometheus.Counter
	quietBusy        prometheus.Counter
	reverifications  *prometheus.CounterVec
	limitRejections  *prometheus.CounterVec
	apiErrors        *prometheus.CounterVec
	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	bytes            *prometheus.CounterVec
	openStreams      prometheus.Gauge
	routeWait        prometheus.Histogram
	forwarded        *prometheus.CounterVec
	retries          *prometheus.CounterVec
	peerMu           sync.Mutex      // guards peers
	peers            map[string]bool // peer label values in use
	forwardedIn      *prometheus.CounterVec
	peerDials        *prometheus.CounterVec
	peerConns        *prometheus.CounterVec
	peerLinkLosses   prometheus.Counter
	peerLinksDrained prometheus.Counter
	uploadsCut       prometheus.Counter // request bodies Close interrupted (server.go stopUploads)
	hygiene          hygieneMetrics     // headers refused or removed (origin.go)
	// recent keeps the last requests' durations per route, for the web page's p50/p99
	// (status.go).
	recent recentLatencies

	childrenOnce sync.Once
	children     *metricChildren
}

func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	m := &metrics{
		agentConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_agent_connections_total",
			Help: "Agent connections by result: accepted, replaced (retired: a newer process of its replica connected to this kasd, and it did not answer a probe), restarted_elsewhere (retired: the same, the newer process connected to another kasd), suspect_alive (it answered, and is kept: an upgrade that has yet to stop it, or two live processes under one replica name), revoked (closed: a reload of the agent tokens file no longer lists its token), or the refusal code (unauthenticated, overloaded, ...).",
		}, []string{"result"}),
		tlsResumptions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasd_agent_tls_resumptions_total",
			Help: "Accepted agent connections whose TLS handshake resumed a session (no certificate sent or signed); the rest of kasd_agent_connections_total{result=\"accepted\"} made a full handshake.",
		}),
		limitRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_limit_rejections_total",
			Help: "Requests or connections refused because a named limit was hit, by limit.",
		}, []string{"reason"}),
		apiErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_api_errors_total",
			Help: "Client API requests answered with an error produced by kasd, by error code.",
		}, []string{"code"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_requests_total",
			Help: "Proxied requests by route (local, forwarded, none) and HTTP status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kasd_request_duration_seconds",
			Help:    "Time to serve a proxied request until its response ended, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"route"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_proxied_bytes_total",
			Help: "Body bytes proxied, by direction (request: client to agent, response: agent to client).",
		}, []string{"direction"}),
		openStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kasd_open_streams", Help: "Request streams to agents currently open.",
		}),
		routeWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kasd_route_wait_seconds",
			Help:    "Time requests waited for their agent to connect (only requests that had to wait).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_forwarded_requests_total",
		Help: "Requests this kasd forwarded to a peer, one per attempt (a request retried on another holder counts at each peer it went to; kasd_retries_total counts the retries), by peer instance (the first 64 seen; later ones count as other) and result (ok, or the error code).",
	}, []string{"peer", "result"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_retries_total",
		Help: "Requests sent to another holder after a failed attempt, by the route of the failed attempt (local, forwarded) and why (not_sent, not_holder, shutting_down, agent_not_connected, agent_failed).",
	}, []string{"route", "reason"})
	m.forwardedIn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_forwarded_in_total",
		Help: "Forwarded requests received from peers, by result (ok, not_holder, ...).",
	}, []string{"result"})
	m.peerDials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_peer_dials_total", Help: "Connections dialled to peers, by result.",
	}, []string{"result"})
	m.peerConns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_peer_connections_total", Help: "Connections accepted from peers, by result.",
	}, []string{"result"})
	m.peerLinkLosses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_peer_link_losses_total", Help: "Live peer connections that ended other than by this kasd closing (peer died, partition, drain).",
	})
	m.peerLinksDrained = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_peer_links_drained_total", Help: "Links to a draining peer that this kasd closed once every request on them had ended (the peer's drain waits for its origins to close them, so that the end of a response is not cut).",
	})
	m.silenceProbes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_agent_silence_probes_total", Help: "Probes sent on agent connections that had received nothing for their silence threshold (a live agent acknowledges within 1 ms; one that stays silent is closed as silent_closed).",
	})
	m.quietBusy = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_agent_connections_quiet_busy_total", Help: "Times an agent connection with requests in flight had received nothing for a quarter of --agent-busy-silence: new requests try the agent's other holders first until it is heard from again (or closed as silent_closed).",
	})
	m.uploadsCut = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_close_uploads_cut_total", Help: "Request bodies whose client had still not sent them when kasd closed (after the drain and closeUploadWait): the read waiting for the client was interrupted, so that closing does not wait for it.",
	})
	m.reverifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_agent_reverifications_total", Help: "Checks of an agent connection's token when its admission expired (GitLab mode, --gitlab-cache-ttl), made before the first request it would carry: result is ok, revoked (its connections closed) or unavailable (GitLab did not answer: the admission stands, asked again in 30s).",
	}, []string{"result"})
	reg.MustRegister(m.peerLinkLosses, m.peerLinksDrained, m.silenceProbes, m.quietBusy, m.uploadsCut, m.reverifications)
	peerLinks := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kasd_peer_links", Help: "Live connections this kasd dialled to peers.",
	}, func() float64 { return float64(s.livePeerLinks()) })
	reg.MustRegister(m.forwarded, m.retries, m.forwardedIn, m.peerDials, m.peerConns, peerLinks)
	agents := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kasd_connected_agents", Help: "Agents with at least one connection to this kasd.",
	}, func() float64 { a, _ := s.table.counts(); return float64(a) })
	conns := newTransportConnsCollector(s) // kasd_agent_connections{transport} (transport.go)
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kasd_inflight_requests", Help: "Proxied requests in progress.",
	}, func() float64 { return float64(s.inflight.Load()) })
	sendErrors := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "kasd_quic_transient_send_errors_total",
		Help: "Datagrams the kernel refused to send with EPERM (a local firewall), ENOBUFS or EAGAIN: counted as loss, which QUIC recovers from, instead of closing the connection.",
	}, func() float64 { return float64(quic.TransientSendErrors()) })
	reg.MustRegister(sendErrors)
	m.hygiene = newHygieneMetrics(reg)
	reg.MustRegister(m.agentConnections, m.tlsResumptions, m.limitRejections, m.apiErrors, m.requests, m.duration,
		m.bytes, m.openStreams, m.routeWait, agents, conns, inflight)
	return m
}

// streamDone accounts for a finished request stream.
func (m *metrics) streamDone(sent, recv int64) {
	m.openStreams.Dec()
	c := m.cached()
	c.bytesRequest.Add(float64(sent))
	c.bytesResponse.Add(float64(recv))
}

func (m *metrics) observe(route string, status int, d time.Duration) {
	c := m.cached()
	k := requestKey{route, status}
	c.mu.RLock()
	rc, dur := c.requests[k], c.duration[route]
	c.mu.RUnlock()
	if rc == nil || dur == nil {
		rc = m.requests.WithLabelValues(route, strconv.Itoa(status))
		dur = m.duration.WithLabelValues(route)
		c.mu.Lock()
		c.requests[k], c.duration[route] = rc, dur
		c.mu.Unlock()
	}
	rc.Inc()
	dur.Observe(d.Seconds())
	m.recent.note(route, time.Now(), d)
}

// metricChildren caches the per-request metric children, so that a request does not hash its
// label values (WithLabelValues) every time. Label sets are few: routes × status codes.
type metricChildren struct {
	bytesRequest, bytesResponse prometheus.Counter

	mu       sync.RWMutex
	requests map[requestKey]prometheus.Counter
	duration map[string]prometheus.Observer
}

type requestKey struct {
	route  string
	status int
}

func (m *metrics) cached() *metricChildren {
	m.childrenOnce.Do(func() {
		m.children = &metricChildren{
			bytesRequest:  m.bytes.WithLabelValues("request"),
			bytesResponse: m.bytes.WithLabelValues("response"),
			requests:      map[requestKey]prometheus.Counter{},
			duration:      map[string]prometheus.Observer{},
		}
	})
	return m.children
}

// maxPeerLabels bounds the peer label of kasd_forwarded_requests_total: instance ids change
// with every restart of a replica, so the label set is capped to keep the series bounded.
const maxPeerLabels = 64

// peerLabel returns the label value for peer: its id while fewer than maxPeerLabels peers have
// been seen, else "other".
func (m *metrics) peerLabel(peer string) string {
	m.peerMu.Lock()
	defer m.peerMu.Unlock()
	if m.peers == nil {
		m.peers = map[string]bool{}
	}
	if m.peers[peer] {
		return peer
	}
	if len(m.peers) >= maxPeerLabels {
		return "other"
	}
	m.peers[peer] = true
	return peer
}
