package kasd

import (
	"slices"
	"strings"
	"time"

	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// Retiring the connections of an agent process that restarted.
//
// An agentd that is killed leaves its connections open at the kasd instances that held them:
// nothing tells them, and a connection that carries no request is judged silent only after a
// keep-alive period (27s at the daemons' defaults; liveness.go). When the replica comes back it
// connects anew, as a new process (a random id per start, in its hello), maybe to other
// instances. An instance that accepts a connection of the newer process learns it at once
// (agentTable.add lists the earlier processes' connections); every instance also publishes,
// with its connection count, the replicas (agentd processes) it holds in the registry, so that
// an instance still holding a connection of an earlier process of a replica learns from the
// watch that the replica now runs as a newer process elsewhere. Either way that connection is
// then suspect: routing prefers the agent's other connections and peers, a forwarded request is
// refused (the origin tries another holder), and it is probed; one that answers nothing within
// suspectProbeWait is closed as dead, so that requests sent into it since the kill fail over as
// unacknowledged (route.go) instead of waiting for the silence threshold. One that answers is
// kept, and the requests in flight on it finish: an in-place upgrade that starts the new
// process before it stops the old one gracefully, or two live processes under one replica name
// (a misconfiguration: two agentd on one host, whose replica defaults to the host name), logged
// and counted once per process and newer process (foundAliveBeside), while a connection of the
// earlier process stays. Closing it at once instead failed the requests in flight on the old
// process, and two live processes at one instance closed each other's connections for as long
// as they ran, each reconnecting and closing the other's.

// suspectProbeWait is how long a suspect connection is given to acknowledge a probe: a live
// agent acknowledges within its 1 ms max_ack_delay plus a round trip; four smoothed round trips
// are waited when that is longer.
const suspectProbeWait = 300 * time.Millisecond

// maxSuspectQueue bounds the connections waiting for retireSuspects; past it a suspicion is
// dropped (and counted), and the silence sampler judges the connection as before.
const maxSuspectQueue = 4096

// replicasOf lists the agentd processes of conns, one entry per replica and process with the
// earliest time this instance accepted a connection of it, sorted by name then process.
func replicasOf(conns []*agentConn) []registry.Replica {
	var out []registry.Replica
	for _, c := range conns {
		if c.replica == "" || c.process == "" {
			continue
		}
		since := c.since.UnixMilli()
		i := slices.IndexFunc(out, func(r registry.Replica) bool { return r.Name == c.replica && r.Process == c.process })
		if i >= 0 {
			out[i].Since = min(out[i].Since, since)
			continue
		}
		out = append(out, registry.Replica{Name: c.replica, Process: c.process, Since: since})
	}
	slices.SortFunc(out, func(a, b registry.Replica) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Process, b.Process)
	})
	return out
}

// suspicion says where the newer process of a suspect connection's replica runs.
type suspicion struct {
	instance string // the kasd instance it is connected to
	process  string // its process id
	here     bool   // instance is this kasd: the newer process connected here (agentTable.add)
}

func (w suspicion) String() string { return w.instance + "/" + w.process }

// foundAliveBeside reports whether a connection in conns of c's replica and process was found
// alive beside process newer: another connection of newer is no new evidence that c's process
// is gone, and the warning is not repeated.
func foundAliveBeside(conns []*agentConn, c *agentConn, newer string) bool {
	for _, o := range conns {
		if o.replica == c.replica && o.process == c.process {
			if p := o.aliveBeside.Load(); p != nil && *p == newer {
				return true
			}
		}
	}
	return false
}

// suspectEarlier marks c suspect, as a connection of an earlier process of its replica, which
// now also runs as process newer at instance (this kasd when here), and queues it for
// retireSuspects. It does nothing when c is suspect already: its probe is under way.
func (s *Server) suspectEarlier(c *agentConn, instance, newer string, here bool) {
	if !c.suspect.CompareAndSwap(false, true) {
		return
	}
	c.suspectOf = suspicion{instance: instance, process: newer, here: here}
	select {
	case s.suspects <- c:
	default:
		c.suspect.Store(false)
		s.m.limitRejections.WithLabelValues("suspect_queue").Inc()
	}
}

// onRemoteReplicas is the registry's replica hook: instanceID holds connections of replicas for
// agentID. A connection here of an earlier process of one of those replicas (another process
// id, first connected elsewhere later than this connection was accepted) becomes suspect. It is
// called from the registry's watch with its view locked: it only marks and queues.
func (s *Server) onRemoteReplicas(agentID, instanceID string, replicas []registry.Replica) {
	s.table.mu.RLock()
	var conns []*agentConn
	if e := s.table.agents[agentID]; e != nil {
		conns = e.conns // copy-on-write: safe to read after the lock
	}
	s.table.mu.RUnlock()
	for _, c := range conns {
		if c.replica == "" || c.process == "" {
			continue
		}
		for _, r := range replicas {
			if r.Name != c.replica || r.Process == c.process || r.Since <= c.since.UnixMilli() ||
				foundAliveBeside(conns, c, r.Process) {
				continue
			}
			s.suspectEarlier(c, instanceID, r.Process, false)
			break
		}
	}
}

// retireSuspects probes the suspect connections in batches and closes those that answer
// nothing. One goroutine, owned by the Server: Close stops it.
func (s *Server) retireSuspects() {
	var batch []*agentConn
	var before []uint64
	for {
		select {
		case <-s.quit:
			return
		case c := <-s.suspects:
			batch = append(batch[:0], c)
		}
	more:
		for {
			select {
			case c := <-s.suspects:
				batch = append(batch, c)
			default:
				break more
			}
		}
		wait := suspectProbeWait
		before = before[:0]
		for _, c := range batch {
			st := c.qc.ConnectionStats()
			before = append(before, st.LargestSentAppData)
			wait = max(wait, min(4*st.SmoothedRTT, 2*time.Second))
			c.probe()
		}
		timer := time.NewTimer(wait)
		select {
		case <-s.quit:
			timer.Stop()
			return
		case <-timer.C:
		}
		for i, c := range batch {
			w := c.suspectOf
			log := s.log.With().Str("agent_id", c.agentID).Str("connection_id", c.id).Str("replica", c.replica).
				Str("process", c.process).Stringer("newer_process", w).Logger()
			// Alive only if the peer acknowledged a packet sent after the probe's mark: packets
			// it sent before it died, still queued in this process's socket, are no answer
			// (the rule of unacked in route.go).
			if !unacked(c.qc, before[i]) {
				c.aliveBeside.Store(&w.process)
				c.suspect.Store(false)
				s.m.agentConnections.WithLabelValues("suspect_alive").Inc()
				log.Warn().Msg("agent replica runs as two live processes (an upgrade that has yet to stop the earlier one, or two agentd with the same replica name): keeping both connections")
				continue
			}
			if w.here {
				s.m.agentConnections.WithLabelValues("replaced").Inc()
				log.Info().Msg("agent replica restarted; its earlier process does not answer: retiring its connection")
				_ = c.qc.CloseWithError(quic.ConnCodeNoError, "replaced by a newer process of replica "+c.replica)
			} else {
				s.m.agentConnections.WithLabelValues("restarted_elsewhere").Inc()
				log.Info().Msg("agent replica restarted and reconnected elsewhere; its earlier process does not answer: retiring its connection")
				_ = c.qc.CloseWithError(quic.ConnCodeNoError, "replaced by a newer process of replica "+c.replica+" elsewhere")
			}
			s.table.remove(c)
		}
		clear(batch)
	}
}
