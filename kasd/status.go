package kasd

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// Status is a snapshot of what the web page (package webui) shows about this kasd and the fleet
// as this kasd sees it. StatusFor builds it for an authenticated client; every field is read
// from memory (the agent table, the registry's watched view, peer links, metrics), never from
// etcd or a peer, so taking one costs microseconds.
type Status struct {
	Time     time.Time      `json:"time"`
	Instance InstanceStatus `json:"instance"`
	// Peers are the other kasd instances in the registry's view, ordered by id, with the state
	// of this kasd's link to each. Empty for a standalone kasd.
	Peers []PeerStatus `json:"peers"`
	// Agents are the agents the caller's JWT may reach and StatusOptions.Filter matches,
	// ordered by id, at most StatusOptions.MaxAgents of them: this kasd's own connections of
	// each, and every instance the registry says holds it.
	Agents []AgentStatus `json:"agents"`
	// AgentsMatched counts the agents that the JWT may reach and the filter matches, listed or
	// not: Agents is cut to MaxAgents when it is larger.
	AgentsMatched int `json:"agents_matched"`
	// Routes are cumulative request counts by route (local, forwarded, none) and HTTP status,
	// with latency quantiles of the route's recent requests. Rates are differences of two
	// snapshots.
	Routes []RouteStatus `json:"routes"`
	// APIErrors counts client API requests answered with an error kasd produced, by error code
	// (kasd_api_errors_total): agent_not_connected, deadline_exceeded, ...
	APIErrors map[string]uint64 `json:"api_errors"`
	// Inflight is the number of proxied requests in progress (kasd_inflight_requests).
	Inflight int64 `json:"inflight"`
}

// InstanceStatus is this kasd.
type InstanceStatus struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	// State is "serving", or "draining" from BeginDrain on (readyz fails, agents and peers were
	// told to leave; client requests are still served).
	State         string     `json:"state"`
	DrainingSince *time.Time `json:"draining_since,omitempty"`
	// Fleet is false for a standalone kasd (no etcd, no peers).
	Fleet bool `json:"fleet"`
	// Lease is "held" or "lost" (the etcd lease of this instance's registry entries), "none"
	// for a standalone kasd.
	Lease   string `json:"lease"`
	APIAddr string `json:"api_addr,omitempty"`
	// Agents and Connections count this kasd's own agents and agent connections (all agents,
	// whatever the caller's JWT may reach, as kasd_connected_agents does).
	Agents      int `json:"agents"`
	Connections int `json:"connections"`
}

// PeerStatus is another kasd of the fleet and this kasd's link to it.
type PeerStatus struct {
	ID       string `json:"id"`
	Version  string `json:"version,omitempty"`
	APIAddr  string `json:"api_addr,omitempty"`
	PeerAddr string `json:"peer_addr,omitempty"`
	// State is what this kasd knows of the peer: "serving" (listed in the registry under a live
	// lease, link up or not dialled yet), "draining" (its registry entry is marked draining, or
	// it sent GoAway on the link, which this kasd closes once its requests on it are done; it
	// stays draining while this kasd redials it, until a link it accepts carries no GoAway), or
	// "unreachable" (the link failed or could not be dialled less than the peer retry delay
	// ago; requests go to other holders meanwhile).
	State string `json:"state"`
	// Link is the QUIC connection this kasd dialled to the peer; nil while there is none.
	Link *LinkStatus `json:"link,omitempty"`
}

// LinkStatus is a QUIC connection's path statistics (quic-go's ConnectionStats).
type LinkStatus struct {
	// RTTMillis is the smoothed round-trip time, RTTVarMillis its mean deviation and
	// MinRTTMillis the smallest sample, in milliseconds.
	RTTMillis    float64 `json:"rtt_ms"`
	RTTVarMillis float64 `json:"rtt_var_ms"`
	MinRTTMillis float64 `json:"min_rtt_ms"`
	// PacketsSent and PacketsLost are counted over the connection's life; Loss is their ratio
	// (0..1). quic-go may take back a loss when the packet arrives late, so PacketsLost can
	// decrease.
	PacketsSent     uint64  `json:"packets_sent"`
	PacketsLost     uint64  `json:"packets_lost"`
	PacketsReceived uint64  `json:"packets_received"`
	Loss            float64 `json:"loss"`
}

// AgentStatus is one agent.
type AgentStatus struct {
	ID string `json:"id"`
	// Holders are the kasd instances holding the agent, this one first when it does, then the
	// others the registry lists, ordered by id.
	Holders []HolderStatus `json:"holders"`
	// Connections are this kasd's own connections of the agent.
	Connections []AgentConnStatus `json:"connections"`
	// Inflight counts this kasd's proxied requests to the agent in progress.
	Inflight int64 `json:"inflight"`
	// Services is the union of the services this kasd's connections offer, sorted; empty when
	// only peers hold the agent (the registry does not list services).
	Services []string `json:"services"`
}

// HolderStatus is one kasd holding an agent.
type HolderStatus struct {
	Instance    string `json:"instance"`
	Connections int    `json:"connections"`
	Local       bool   `json:"local"`
}

// AgentConnStatus is one agent connection to this kasd.
type AgentConnStatus struct {
	ID      string `json:"id"`
	Replica string `json:"replica"`
	Version string `json:"agent_version"`
	// Transport is how the agent is connected: "quic", or "tcp" (QUIC carried over TCP, the
	// fallback of agents whose UDP is blocked; docs/transport.md).
	Transport string    `json:"transport"`
	Remote    string    `json:"remote_addr"`
	Since     time.Time `json:"connected_since"`
	Services  []string  `json:"services"`
	// Silent is true while the connection received nothing for 3s: routing prefers the agent's
	// other connections, and it is closed if a probe goes unanswered.
	Silent bool       `json:"silent"`
	Link   LinkStatus `json:"link"`
}

// RouteStatus is the request figures of one route.
type RouteStatus struct {
	Route string `json:"route"`
	// Requests counts every proxied request of the route by HTTP status (kasd_requests_total);
	// 499 is a client that went away.
	Requests map[string]uint64 `json:"requests"`
	// Latency is over the route's most recent requests (at most latencySamples, none older
	// than latencyWindow).
	Latency LatencyStatus `json:"latency"`
}

// LatencyStatus summarises recent request durations (from the client's request to the end of
// the response, as kasd_request_duration_seconds measures them).
type LatencyStatus struct {
	Samples    int     `json:"samples"`
	P50Millis  float64 `json:"p50_ms"`
	P99Millis  float64 `json:"p99_ms"`
	MaxMillis  float64 `json:"max_ms"`
	WindowSecs float64 `json:"window_s"`
}

// StatusOptions choose the agents a Status lists.
type StatusOptions struct {
	// MaxAgents bounds the agents listed, so that a status stays small on a kasd that holds tens
	// of thousands (the page polls it every second). Default (0) 200.
	MaxAgents int
	// Filter, when not empty, lists only the agents whose id contains it.
	Filter string
}

// DefaultStatusAgents is StatusOptions.MaxAgents' default.
const DefaultStatusAgents = 200

// StatusFor authenticates r's client JWT (as GET /api/v1/agents does) and returns the status
// with only the agents that JWT may reach. Errors are *api.Error (unauthenticated) and are
// counted in kasd_api_errors_total. Instances, peers and route figures are not scoped: they
// are what /metrics already shows about this kasd.
func (s *Server) StatusFor(r *http.Request, opt StatusOptions) (*Status, error) {
	claims, err := s.authenticate(r)
	if err != nil {
		s.m.apiErrors.WithLabelValues(api.CodeOf(err).String()).Inc()
		return nil, err
	}
	if opt.MaxAgents <= 0 {
		opt.MaxAgents = DefaultStatusAgents
	}
	allow := claims.AllowsAgent
	if opt.Filter != "" {
		allow = func(id string) bool { return strings.Contains(id, opt.Filter) && claims.AllowsAgent(id) }
	}
	return s.snapshot(time.Now(), allow, opt.MaxAgents), nil
}

// snapshot builds a Status at now with at most maxAgents of the agents allow admits.
func (s *Server) snapshot(now time.Time, allow func(agentID string) bool, maxAgents int) *Status {
	st := &Status{Time: now, Inflight: s.inflight.Load(), Peers: []PeerStatus{}}
	st.Instance = s.instanceStatus()
	if s.fleet != nil {
		st.Peers = s.fleet.peerStatuses(now)
	}
	st.Agents, st.AgentsMatched = s.agentStatuses(now, allow, maxAgents)
	st.Routes = s.routeStatuses(now)
	st.APIErrors = counterValues(s.m.apiErrors, "code")
	return st
}

func (s *Server) instanceStatus() InstanceStatus {
	in := InstanceStatus{ID: s.cfg.InstanceID, Version: s.cfg.Version, State: "serving", Lease: "none"}
	s.mu.Lock()
	started := s.drainStarted
	s.mu.Unlock()
	if s.draining.Load() {
		in.State = "draining"
		if !started.IsZero() {
			in.DrainingSince = &started
		}
	}
	in.Agents, in.Connections = s.table.counts()
	if s.fleet != nil {
		in.Fleet = true
		in.APIAddr = s.fleet.reg.Self().APIAddr
		in.Lease = "lost"
		if s.fleet.reg.LeaseHeld() {
			in.Lease = "held"
		}
	}
	return in
}

func linkStatus(qc *quicgo.Conn) LinkStatus {
	cs := qc.ConnectionStats()
	l := LinkStatus{
		RTTMillis:       millis(cs.SmoothedRTT),
		RTTVarMillis:    millis(cs.MeanDeviation),
		MinRTTMillis:    millis(cs.MinRTT),
		PacketsSent:     cs.PacketsSent,
		PacketsLost:     cs.PacketsLost,
		PacketsReceived: cs.PacketsReceived,
	}
	if cs.PacketsSent > 0 {
		l.Loss = float64(cs.PacketsLost) / float64(cs.PacketsSent)
	}
	return l
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// agentStatuses returns the first maxAgents (by id) of the agents allow admits, and how many
// it admits. Only the listed agents are looked at in detail.
func (s *Server) agentStatuses(now time.Time, allow func(string) bool, maxAgents int) ([]AgentStatus, int) {
	matched := map[string]bool{}
	s.table.mu.RLock()
	for id := range s.table.agents {
		if allow(id) {
			matched[id] = true
		}
	}
	s.table.mu.RUnlock()
	var fleetAgents map[string][]registry.Holder
	if s.fleet != nil {
		fleetAgents = s.fleet.reg.Agents()
		for id, holders := range fleetAgents {
			if !matched[id] && allow(id) && slices.ContainsFunc(holders, func(h registry.Holder) bool { return h.Instance.ID != s.cfg.InstanceID }) {
				matched[id] = true
			}
		}
	}
	ids := slices.Sorted(maps.Keys(matched))
	if len(ids) > maxAgents {
		ids = ids[:maxAgents]
	}

	type local struct {
		conns    []*agentConn
		inflight int64
	}
	locals := make(map[string]local, len(ids))
	s.table.mu.RLock()
	for _, id := range ids {
		if e := s.table.agents[id]; e != nil {
			// e.conns is copied on write: the slice stays valid after the lock is released.
			locals[id] = local{conns: e.conns, inflight: e.inflight.Load()}
		}
	}
	s.table.mu.RUnlock()

	out := make([]AgentStatus, 0, len(ids))
	for _, id := range ids {
		a := AgentStatus{ID: id, Holders: []HolderStatus{}, Connections: []AgentConnStatus{}, Services: []string{}}
		if l, ok := locals[id]; ok {
			a.Inflight = l.inflight
			a.Holders = append(a.Holders, HolderStatus{Instance: s.cfg.InstanceID, Connections: len(l.conns), Local: true})
			for _, c := range l.conns {
				a.Connections = append(a.Connections, AgentConnStatus{
					ID: c.id, Replica: c.replica, Version: c.version, Transport: quic.TransportOf(c.qc.RemoteAddr()),
					Remote: c.qc.RemoteAddr().String(), Since: c.since, Services: c.services,
					Silent: c.silent(now), Link: linkStatus(c.qc),
				})
				for _, svc := range c.services {
					if !slices.Contains(a.Services, svc) {
						a.Services = append(a.Services, svc)
					}
				}
			}
			sort.Strings(a.Services)
			sort.Slice(a.Connections, func(i, j int) bool { return a.Connections[i].ID < a.Connections[j].ID })
		}
		for _, h := range fleetAgents[id] { // ordered by instance id
			if h.Instance.ID != s.cfg.InstanceID { // the local table is fresher for this instance
				a.Holders = append(a.Holders, HolderStatus{Instance: h.Instance.ID, Connections: h.Connections})
			}
		}
		out = append(out, a)
	}
	return out, len(matched)
}

// routeNames are the values of the route label, in the order the page shows them.
var routeNames = []string{"local", "forwarded", "none"}

func (s *Server) routeStatuses(now time.Time) []RouteStatus {
	byRoute := map[string]map[string]uint64{}
	collect(s.m.requests, func(labels map[string]string, v float64) {
		r := labels["route"]
		if byRoute[r] == nil {
			byRoute[r] = map[string]uint64{}
		}
		byRoute[r][labels["code"]] += uint64(v)
	})
	out := make([]RouteStatus, 0, len(routeNames))
	for _, r := range routeNames {
		reqs := byRoute[r]
		if reqs == nil {
			reqs = map[string]uint64{}
		}
		out = append(out, RouteStatus{Route: r, Requests: reqs, Latency: s.m.recent.ring(r).summary(now)})
	}
	return out
}

// counterValues returns a counter vector's values by the value of one label.
func counterValues(vec *prometheus.CounterVec, label string) map[string]uint64 {
	out := map[string]uint64{}
	collect(vec, func(labels map[string]string, v float64) { out[labels[label]] += uint64(v) })
	return out
}

// collect calls f with the labels and value of every counter in c.
func collect(c prometheus.Collector, f func(labels map[string]string, v float64)) {
	ch := make(chan prometheus.Metric, 64)
	go func() { // owned here: it ends when Collect returns, and the range below drains it
		c.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil || pb.Counter == nil {
			continue
		}
		labels := make(map[string]string, len(pb.Label))
		for _, l := range pb.Label {
			labels[l.GetName()] = l.GetValue()
		}
		f(labels, pb.Counter.GetValue())
	}
}

// peerStatuses lists the registry's instances other than this one with the state of the link
// to each. A peer without a link, or whose link failed more than the retry delay ago, is
// dialled in the background (one dial at a time per peer), as the first request forwarded to it
// would: so the page shows a drain (GoAway on the link) or an unreachable peer within a
// poll or two instead of only after traffic went there.
func (f *fleet) peerStatuses(now time.Time) []PeerStatus {
	insts := f.reg.Instances()
	out := make([]PeerStatus, 0, len(insts))
	for _, inst := range insts {
		if inst.ID == f.s.cfg.InstanceID {
			continue
		}
		p := PeerStatus{ID: inst.ID, Version: inst.Version, APIAddr: inst.APIAddr, PeerAddr: inst.PeerAddr, State: "serving"}
		if inst.Draining {
			p.State = "draining" // its registry entry says so, link or not
		}
		f.mu.Lock()
		l := f.links[inst.ID]
		f.mu.Unlock()
		dial := l == nil || l.addr != inst.PeerAddr
		if !dial {
			select {
			case <-l.ready:
				switch {
				case l.qc != nil && l.qc.Context().Err() == nil:
					ls := linkStatus(l.qc)
					p.Link = &ls
					if l.draining.Load() {
						p.State = "draining"
					}
				case l.draining.Load() && l.down(f.cfg.PeerRetryDelay):
					// This kasd closed the link to the draining peer once its requests on
					// it were done (peerLink.closeIfDrained).
					p.State = "draining"
				case l.down(f.cfg.PeerRetryDelay):
					p.State = "unreachable"
				default:
					if l.draining.Load() {
						// The drained link was closed over a retry delay ago: the redial
						// below finds the peer draining still, or (restarted) serving.
						p.State = "draining"
					}
					dial = true
				}
			default: // a dial is under way
				if l.draining.Load() {
					p.State = "draining" // redialling a peer that drains (fleet.conn)
				}
			}
		}
		if dial {
			f.probe(inst)
		}
		out = append(out, p)
	}
	return out
}

// probe dials inst in a goroutine the Server owns, unless a probe of it is already running.
func (f *fleet) probe(inst registry.Instance) {
	if !f.s.status.probing(inst.ID) {
		return
	}
	started := f.s.goOwned(func() {
		defer f.s.status.probed(inst.ID)
		ctx, cancel := context.WithTimeout(context.Background(), 2*f.cfg.PeerQUIC.HandshakeTimeout)
		defer cancel()
		_, _ = f.conn(ctx, inst) // failures are logged, counted and remembered by conn
	})
	if !started {
		f.s.status.probed(inst.ID)
	}
}

// statusState is the Server's state for StatusFor: which peers are being probed.
type statusState struct {
	mu     sync.Mutex      // guards the field below
	probes map[string]bool // peers being dialled by probe
}

// probing marks id as being probed; false if it already was.
func (st *statusState) probing(id string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.probes[id] {
		return false
	}
	if st.probes == nil {
		st.probes = map[string]bool{}
	}
	st.probes[id] = true
	return true
}

func (st *statusState) probed(id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.probes, id)
}

// Recent request latency, per route, for the page's p50/p99: kasd_request_duration_seconds has
// buckets a factor 4 apart (100µs, 400µs, 1.6ms, ...), too coarse for quantiles of requests
// that take a few hundred microseconds.

const (
	// latencySamples is how many recent requests of a route are kept (16 KiB per route).
	latencySamples = 1024
	// latencyWindow is the age beyond which a sample no longer counts.
	latencyWindow = 60 * time.Second
)

// recentLatencies holds one ring per route label value.
type recentLatencies struct {
	local, forwarded, none latencyRing
}

// ring returns the ring of route, or nil for an unknown route.
func (r *recentLatencies) ring(route string) *latencyRing {
	switch route {
	case "local":
		return &r.local
	case "forwarded":
		return &r.forwarded
	case "none":
		return &r.none
	}
	return nil
}

// note records one request's duration. It takes no lock: one atomic add and two stores, on the
// request path of every proxied request.
func (r *recentLatencies) note(route string, at time.Time, d time.Duration) {
	if ring := r.ring(route); ring != nil {
		ring.add(at, d)
	}
}

// latencyRing is a ring of the durations of the last latencySamples requests. A reader may see a
// slot whose time and duration come from two different writes racing on it; that costs one
// sample's accuracy, never memory safety.
type latencyRing struct {
	next atomic.Uint64
	at   [latencySamples]atomic.Int64 // unix nanoseconds the request ended; 0: empty slot
	dur  [latencySamples]atomic.Int64
}

func (r *latencyRing) add(at time.Time, d time.Duration) {
	i := (r.next.Add(1) - 1) % latencySamples
	r.dur[i].Store(int64(d))
	r.at[i].Store(at.UnixNano())
}

// summary returns quantiles of the samples not older than latencyWindow at now.
func (r *latencyRing) summary(now time.Time) LatencyStatus {
	out := LatencyStatus{WindowSecs: latencyWindow.Seconds()}
	if r == nil {
		return out
	}
	oldest := now.Add(-latencyWindow).UnixNano()
	ds := make([]time.Duration, 0, latencySamples)
	for i := range r.at {
		if at := r.at[i].Load(); at != 0 && at >= oldest {
			ds = append(ds, time.Duration(r.dur[i].Load()))
		}
	}
	if len(ds) == 0 {
		return out
	}
	slices.Sort(ds)
	out.Samples = len(ds)
	out.P50Millis = millis(quantile(ds, 0.50))
	out.P99Millis = millis(quantile(ds, 0.99))
	out.MaxMillis = millis(ds[len(ds)-1])
	return out
}

// quantile returns the q-quantile of sorted ds by the nearest-rank method.
func quantile(ds []time.Duration, q float64) time.Duration {
	k := int(q*float64(len(ds))+0.999999) - 1 // ceil(q*n) - 1
	return ds[min(max(k, 0), len(ds)-1)]
}
