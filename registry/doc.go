// Package registry is the etcd lease registry of kasd: which kasd instance holds which
// agent, so that any replica can forward a request to one that holds the agent. It also
// runs an embedded etcd for the zero-setup default.
//
// # Key layout
//
// Everything lives under the fleet's root, <prefix>fleets/<fleet-id>/ (Config.Prefix,
// default "/qkas/", and Config.FleetID), and is attached to the publishing instance's lease:
//
//	<root>instances/<instance-id>         {"id":…,"peer_addr":…,"api_addr":…,"version":…,"fleet_check":…,"draining":true}
//	<root>agents/<agent-id>/<instance-id> {"connections":N,"replicas":[{"name":…,"process":…,"since":…}]}
//
// "draining" is present once the instance began to drain (SetDraining): it still holds and
// serves its agents but is no place to move agents to.
//
// A registry reads and watches its own fleet's root only: two fleets sharing one etcd (the
// embedded one on 127.0.0.1:2379 is shared by every kasd on a machine) never see each
// other's instances or agents, so a kasd never forwards to another fleet's kasd.
//
// An agent key's value is at most 64 KiB (maxAgentValueSize, far under etcd's 1.5 MiB request
// limit): an agent whose replicas would not fit is published with those that do. A key etcd
// still refuses on its own (too large for an etcd configured smaller, say) is logged, counted and
// skipped, and the other keys of its transaction are published (session.go, commitOrSplit).
//
// An agent key exists while its instance holds at least one connection for the agent (it is
// written on the first connection, rewritten when N changes, deleted on the last
// disconnect). Its replicas (SetAgent, Replica) are the agentd processes of those connections:
// an instance that sees a newer process of a replica it holds learns that the earlier one may
// be gone (SetReplicaHook; kasd probes its connection, and retires it if it does not answer). Values from before replicas were
// published simply have none. Instance IDs and fleet IDs may not contain "/"; agent IDs may (the instance ID
// is what follows the last "/"). Keys under the root that match neither form are ignored.
//
// # Goroutines and ownership
//
// New starts exactly two goroutines, both owned by the Registry and waited for by Close and
// Shutdown:
//
//   - the session goroutine (session.go) owns the lease: it grants it, keeps it alive through
//     an etcd concurrency.Session, notices its loss (Session.Done: the client's keep-alive
//     gave up once the TTL passed without an answer, or etcd answered "lease not found"), and
//     then grants a new one. It is also the publisher: it reconciles etcd to the local desired
//     state (this instance + its agent counts), on every local change and in full after each
//     new lease, retrying with backoff after errors. Each etcd call it makes is bounded by a
//     fraction of the TTL. The Session's own keep-alive goroutine is waited for (Orphan)
//     before the session goroutine moves to the next lease or returns.
//   - the watch goroutine (view.go) keeps the in-memory view with ONE watch on the root: a
//     Get of the whole root, then a Watch from the following revision; after a compaction
//     (the watch asks for a revision etcd no longer has), a watch error or a closed watch
//     channel it starts over with a new Get (counted in kasd_registry_watch_resyncs_total).
//
// # The lease and concurrency.Session
//
// etcd's concurrency.Session keeps the lease alive (its goroutine eats the keep-alive
// responses; Done() is closed when the lease is lost), and that is what it is used for. Three
// things stay here because a Session does not do them the way the registry needs:
//
//   - Granting. NewSession without WithLease waits on one Grant for as long as its context
//     lives. The registry grants itself, each attempt bounded by the op timeout and retried
//     with backoff, and hands the lease to NewSession (WithLease), so a half-dead etcd
//     connection never holds the session goroutine for longer than a fraction of the TTL.
//   - Losing and re-granting. A Session is over once its lease is lost; the registry is not:
//     it serves its agents from the local desired state all along (an etcd outage of 20 s
//     drops no agent: they stay connected to this kasd and are served by it; only other
//     replicas' forwarding to it pauses), grants a new lease, wraps it in a new Session and
//     republishes everything. The lost lease is revoked once the new one holds the keys.
//   - Ending. Session.Close revokes with a timeout of its own; the registry's Close must not
//     revoke (a crash and a Close look alike to peers) and Shutdown revokes within the
//     caller's context, so the Session is only ever Orphaned.
//
// # What callers may assume
//
//   - The local desired state is the source of truth. SetAgentConnections only updates it
//     under a mutex and wakes the publisher through a 1-slot channel: it never blocks on etcd,
//     also while etcd is down or the lease is lost. When the lease comes back, everything is
//     republished.
//   - Lookups (Holders, Instances, Agents, Load, WaitForHolder, Synced) read the in-memory view
//     only: they never make an etcd round trip. The view is empty until the first sync
//     (Synced) and, while etcd is unreachable, is the last state seen.
//   - Changed returns a channel closed at the next change of the view (close and replace),
//     so waiters are woken by the watch; WaitForHolder is built on it.
//   - Holders and Instances are ordered by instance ID. A holder whose instance key is
//     missing is still returned, with only Instance.ID set.
//
// # Close and Shutdown
//
// Close cancels both goroutines and waits for them to return, WITHOUT revoking the lease:
// the keys stay until the lease expires after the TTL, which is what a crash looks like to
// the other instances. Shutdown does the same and then revokes the lease within its ctx,
// which deletes every key this instance published at once. Both are idempotent. Neither
// closes the etcd client, which belongs to the caller and must outlive them.
//
// # Metrics
//
// Registered on the Registerer given to New (never the global default):
// kasd_registry_entries{kind} (keys in the view), kasd_registry_lease_state (1 held, 0
// lost), kasd_registry_leases_granted_total, kasd_registry_watch_resyncs_total{reason},
// kasd_registry_watch_lag_seconds, kasd_registry_publish_errors_total and
// kasd_registry_publish_limited_total{reason} (replicas_truncated, refused). etcd records no
// commit time, so the watch lag is defined for this instance's own writes only: the time
// from sending a write to etcd until the watch applies it to the view (a round trip plus
// the watch delivery delay).
//
// # Embedded etcd
//
// StartEmbedded runs an etcd server in a data directory, serving clients on
// 127.0.0.1:2379 by default so that other local kasd processes can share it. If that address
// is already taken by another process's etcd, it joins that one as a client instead. Close
// stops the server it started and waits for it.
package registry
