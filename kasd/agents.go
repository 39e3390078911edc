package kasd

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// agentConn is one live, authenticated agent connection.
type agentConn struct {
	id       string // connection id, unique within this kasd
	agentID  string
	token    string // the agent token this connection authenticated with, for GitLab requests
	replica  string
	process  string // random id of the agentd process (Hello.Process)
	version  string
	services []string // sorted
	since    time.Time
	qc       *quicgo.Conn
	entry    *agentEntry // set by agentTable.add

	ctrlMu  sync.Mutex // guards writes to control
	control *quicgo.Stream
	// controlOnStreams: the agent sends Ping and GoAway on streams it opens
	// (api.FeatureControlOnStreams), and kasd does not read control after Welcome.
	controlOnStreams bool

	statMu     sync.Mutex // guards the fields below
	lastRecv   uint64     // packets received at lastChange
	lastChange time.Time  // when lastRecv last changed (or the connection started)

	live liveness // silence thresholds and the sampler's state (liveness.go)

	// suspect is set when the replica runs as a newer process, here (agentTable.add) or
	// elsewhere (the registry): routing avoids the connection until a probe decides
	// (restarted.go). suspectOf says where that process runs; only the goroutine that set
	// suspect writes it, before queueing the connection, and retireSuspects reads it.
	suspect   atomic.Bool
	suspectOf suspicion
	// quietBusy is set by the silence sampler while the connection has requests in flight and
	// has received nothing for a quarter of its busy silence (a live agent acknowledges within
	// milliseconds): new requests go to the agent's other holders first, instead of joining
	// those that wait for the connection to be found dead (liveness.go).
	quietBusy atomic.Bool
	// revoked is set once the connection's token was found revoked (revoke, agentauth.go).
	revoked atomic.Bool
	// reverify is the check of an admission that expires (reverify.go).
	reverify reverifyState
	// aliveBeside is the newer process of the replica that this connection's process was found
	// alive beside (restarted.go): that process is then no reason to suspect this process's
	// connections again (foundAliveBeside).
	aliveBeside atomic.Pointer[string]

	// streams counts the request streams kasd opened on the connection and has not finished
	// reading; once the agent said it leaves (left), the last one to finish closes the
	// connection: kasd has then read every byte the agent sent, which the agent, closing by
	// itself, could not know (closing discards what is still in its send buffer).
	streams atomic.Int64
	left    atomic.Bool
}

// streamStarted counts a request stream about to be opened on c.
func (c *agentConn) streamStarted() { c.streams.Add(1) }

// streamDone ends what streamStarted counted; the last stream of a connection the agent left
// closes it.
func (c *agentConn) streamDone() {
	if c.streams.Add(-1) == 0 && c.left.Load() {
		_ = c.qc.CloseWithError(quic.ConnCodeNoError, "agent left; its requests are done")
	}
}

// agentLeft records the agent's GoAway: kasd routes nothing new to c, and closes it once the
// requests in flight on it are done (at once if none is).
func (c *agentConn) agentLeft() {
	c.left.Store(true)
	if c.streams.Load() == 0 {
		_ = c.qc.CloseWithError(quic.ConnCodeNoError, "agent left; no request in flight")
	}
}

// silentAfter is how long an agent connection may receive nothing before requests prefer the
// agent's other connections, when the keep-alive period is quic.Config's 2s default; a
// connection accepted with another period uses that period plus a margin (silentAfterFor,
// liveness.go).
const silentAfter = 3 * time.Second

// probeAfter is how long a silent connection is given to answer a probe before it is presumed
// dead and closed: silentAfter plus this is well under the 6s idle timeout.
const probeAfter = time.Second

// sample records whether packets arrived since the last sample (Server.sampleSilence calls it
// every 500 ms for every connection) and says how long the connection has been silent. fresh
// (after this kasd itself was paused) starts the silence anew: a paused kasd must not judge its
// connections by the time it did not run.
func (c *agentConn) sample(now time.Time, fresh bool) time.Duration {
	recv := c.qc.ConnectionStats().PacketsReceived
	c.statMu.Lock()
	defer c.statMu.Unlock()
	if recv != c.lastRecv || c.lastChange.IsZero() || fresh {
		c.lastRecv, c.lastChange = recv, now
	}
	return now.Sub(c.lastChange)
}

// probe sends a padded Ping on the control stream: a live agent acknowledges it within its
// max_ack_delay, which the next sample sees.
func (c *agentConn) probe() {
	c.ctrlMu.Lock()
	defer c.ctrlMu.Unlock()
	_ = c.control.SetWriteDeadline(time.Now().Add(time.Second))
	_ = api.WriteFrame(c.control, &api.Ping{Padding: make([]byte, 64)})
}

// silent reports whether nothing arrived on the connection for silentAfter: a process that was
// killed or paused, or a path that went dark, before the idle timeout says so.
func (c *agentConn) silent(now time.Time) bool {
	c.statMu.Lock()
	defer c.statMu.Unlock()
	return !c.lastChange.IsZero() && now.Sub(c.lastChange) > c.silenceLimit()
}

func (c *agentConn) offers(service string) bool {
	_, ok := slices.BinarySearch(c.services, service)
	return ok
}

// sendGoAway asks the agent to reconnect elsewhere; the connection stays usable for in-flight
// requests.
func (c *agentConn) sendGoAway(reason string) {
	c.ctrlMu.Lock()
	defer c.ctrlMu.Unlock()
	_ = c.control.SetWriteDeadline(time.Now().Add(time.Second))
	_ = api.WriteFrame(c.control, &api.GoAway{Reason: reason})
}

// agentEntry holds an agent's connections.
type agentEntry struct {
	conns    []*agentConn // copy-on-write; replaced under agentTable.mu, read under its read lock
	rr       atomic.Uint64
	inflight atomic.Int64 // requests in flight: agentTable.startRequest counts one, its end Add(-1)
	inBusy   atomic.Bool  // in agentTable.busy (silence.go)
}

// agentTable maps agent ids to their live connections.
type agentTable struct {
	maxTotal, maxPerAgent int
	onChange              func(agentID string, h registry.Holding) // called under mu; must not block

	mu      sync.RWMutex // guards the fields below
	agents  map[string]*agentEntry
	total   int
	changed chan struct{} // closed and replaced on every change
	gen     uint64        // incremented on every change (the silence sampler's list follows it)

	busyMu sync.Mutex               // guards busy
	busy   map[*agentEntry]struct{} // entries that may have requests in flight (silence.go)
}

func newAgentTable(maxTotal, maxPerAgent int) *agentTable {
	return &agentTable{
		maxTotal:    maxTotal,
		maxPerAgent: maxPerAgent,
		agents:      map[string]*agentEntry{},
		changed:     make(chan struct{}),
		busy:        map[*agentEntry]struct{}{},
	}
}

// reserve checks the total limit before a handshake is even read.
func (t *agentTable) full() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.total >= t.maxTotal
}

// add registers c, or returns the limit it hit (its metric reason) and an overloaded error.
// older lists the connections of earlier processes of c's replica (same agent and replica,
// another process id first seen here before c's): such a process may be gone (killed,
// restarted: its connections would swallow requests until their idle timeout) or still alive
// (an in-place upgrade starts the new process before it stops the old one, which finishes its
// requests; or two agentd share a replica name). They stay in the table: the caller suspects
// them, and only those that do not answer a probe are retired (restarted.go). A connection of a
// process first seen after c's is not listed: an earlier process that reconnects does not push
// out a newer one (a process is as old as its earliest connection in the table: one that held
// no connection here any more looks new, and the other is probed once, and kept if it answers).
// older is returned even when c is refused: a newer process did connect.
func (t *agentTable) add(c *agentConn) (older []*agentConn, limit string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.agents[c.agentID]; e != nil {
		older = earlierProcesses(e.conns, c)
	}
	if t.total >= t.maxTotal {
		return older, "max_agent_connections", api.Errorf(api.CodeOverloaded, "kasd holds its maximum of %d agent connections", t.maxTotal)
	}
	e := t.agents[c.agentID]
	if e == nil {
		e = &agentEntry{}
		t.agents[c.agentID] = e
	}
	if len(e.conns) >= t.maxPerAgent {
		return older, "max_connections_per_agent", api.Errorf(api.CodeOverloaded, "agent %s already holds the maximum of %d connections", c.agentID, t.maxPerAgent)
	}
	e.conns = append(slices.Clip(e.conns), c)
	c.entry = e
	t.total++
	t.notifyLocked(c.agentID, e.conns)
	return older, "", nil
}

// earlierProcesses returns the connections in conns of c's replica whose process was first seen
// (the earliest since of its connections in conns) before c's process, but was not found alive
// beside it already.
func earlierProcesses(conns []*agentConn, c *agentConn) []*agentConn {
	if c.replica == "" || c.process == "" {
		return nil
	}
	firstSeen := func(process string, since time.Time) time.Time {
		for _, o := range conns {
			if o.replica == c.replica && o.process == process && o.since.Before(since) {
				since = o.since
			}
		}
		return since
	}
	mine := firstSeen(c.process, c.since)
	var out []*agentConn
	for _, o := range conns {
		if o.replica == c.replica && o.process != c.process && firstSeen(o.process, o.since).Before(mine) &&
			!foundAliveBeside(conns, o, c.process) {
			out = append(out, o)
		}
	}
	return out
}

func (t *agentTable) remove(c *agentConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removeLocked(c)
}

func (t *agentTable) removeLocked(c *agentConn) {
	e := t.agents[c.agentID]
	if e == nil {
		return
	}
	i := slices.Index(e.conns, c)
	if i < 0 {
		return
	}
	e.conns = slices.Delete(slices.Clone(e.conns), i, i+1)
	t.total--
	if len(e.conns) == 0 {
		delete(t.agents, c.agentID)
	}
	t.notifyLocked(c.agentID, e.conns)
}

func (t *agentTable) notifyLocked(agentID string, conns []*agentConn) {
	t.gen++
	close(t.changed)
	t.changed = make(chan struct{})
	if t.onChange != nil {
		t.onChange(agentID, registry.Holding{Connections: len(conns), Replicas: replicasOf(conns)})
	}
}

// pickAll returns the live connections of agentID that offer service, rotated round-robin so
// that load spreads across replicas. An empty list means the agent has no live connection here;
// an error means it has connections but none offers service.
func (t *agentTable) pickAll(agentID, service string) ([]*agentConn, error) {
	t.mu.RLock()
	e := t.agents[agentID]
	var conns []*agentConn
	if e != nil {
		conns = e.conns
	}
	t.mu.RUnlock()
	if len(conns) == 0 {
		return nil, nil
	}
	start := e.rr.Add(1)
	var out []*agentConn
	live := 0
	for i := range conns {
		c := conns[(start+uint64(i))%uint64(len(conns))]
		if c.qc.Context().Err() != nil {
			continue // closing; about to leave the table
		}
		live++
		if c.offers(service) {
			if out == nil {
				out = make([]*agentConn, 0, len(conns)-i)
			}
			out = append(out, c)
		}
	}
	if live > 0 && len(out) == 0 {
		// Name what the agent does offer (its first live connection's announcement), so a typo
		// is found without reading the agent's configuration.
		var offered []string
		for _, c := range conns {
			if c.qc.Context().Err() == nil {
				offered = c.services
				break
			}
		}
		return nil, api.Errorf(api.CodeServiceUnknown, "agent %s does not offer service %q; it offers %s", agentID, service, api.ListNames(offered))
	}
	return out, nil
}

// waitChange returns a channel closed at the next change of the table.
func (t *agentTable) waitChange() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// all returns every connection, for shutdown.
func (t *agentTable) all() []*agentConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.appendConnsLocked(nil)
}

// appendConnsLocked appends every connection to dst. t.mu must be held.
func (t *agentTable) appendConnsLocked(dst []*agentConn) []*agentConn {
	dst = slices.Grow(dst, t.total)
	for _, e := range t.agents {
		dst = append(dst, e.conns...)
	}
	return dst
}

// counts returns the number of agents and connections.
func (t *agentTable) counts() (agents, conns int) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.agents), t.total
}

// AgentInfo describes a connected agent in GET /api/v1/agents.
// Connections lists this kasd's own connections of the agent; Instances lists every kasd of
// the fleet that holds it (from the registry), with how many connections each.
type AgentInfo struct {
	ID          string           `json:"id"`
	Instances   []InstanceInfo   `json:"instances"`
	Connections []ConnectionInfo `json:"connections"`
}

// InstanceInfo is one kasd holding an agent.
type InstanceInfo struct {
	ID          string `json:"id"`
	APIAddr     string `json:"api_addr,omitempty"`
	Connections int    `json:"connections"`
}

// ConnectionInfo describes one agent connection.
type ConnectionInfo struct {
	ID             string    `json:"id"`
	Instance       string    `json:"instance"`
	Replica        string    `json:"replica"`
	AgentVersion   string    `json:"agent_version"`
	ConnectedSince time.Time `json:"connected_since"`
	Services       []string  `json:"services"`
	Remote         string    `json:"remote_addr,omitempty"`
	// Transport is "quic", or "tcp" for QUIC carried over TCP (docs/transport.md).
	Transport string `json:"transport"`
}

func (t *agentTable) list(instance string) []AgentInfo {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]AgentInfo, 0, len(t.agents))
	for id, e := range t.agents {
		info := AgentInfo{ID: id}
		for _, c := range e.conns {
			info.Connections = append(info.Connections, ConnectionInfo{
				ID: c.id, Instance: instance, Replica: c.replica, AgentVersion: c.version,
				ConnectedSince: c.since, Services: c.services, Remote: c.qc.RemoteAddr().String(),
				Transport: quic.TransportOf(c.qc.RemoteAddr()),
			})
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
