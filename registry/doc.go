// Package registry is the etcd lease registry of kasd: which kasd instance holds which
// agent, so that any replica can forward a request to one that holds the agent. It also
// runs an embedded etcd for the zero-setup default.
//
// # Key layout
//
// Everything lives under the fleet's root, <prefix>fleets/<fleet-id>/ (Config.Prefix,
// default "/qkas/", and Config.FleetID), and is attached to the publishing instance's lease:
//
//	<root>instances/<instance-id>         {"id":…,"peer_addr":…,"api_addr":…,"version":…,"fleet_check":…}
//	<root>agents/<agent-id>/<instance-id> {"connections":N}
//
// A registry reads and watches its own fleet's root only: two fleets sharing one etcd (the
// embedded one on 127.0.0.1:2379 is shared by every kasd on a machine) never see each
// other's instances or agents, so a kasd never forwards to another fleet's kasd.
//
// An agent key exists while its instance holds at least one connection for the agent (it is
// written on the first connection, rewritten when N changes, deleted on the last
// disconnect). Instance IDs and fleet IDs may not contain "/"; agent IDs may (the instance ID
// is what follows the last "/"). Keys under the root that match neither form are ignored.
//
// # Goroutines and ownership
//
// New starts exactly two goroutines, both owned by the Registry and waited for by Close and
// Shutdown:
//
//   - the session goroutine (session.go) owns the lease, like a concurrency.Session: it
//     grants it, keeps it alive, notices its loss (the client's keep-alive channel closes once
//     the TTL passed without an answer, or etcd answers "lease not found"), and then grants a
//     new one. It is also the publisher: it reconciles etcd to the local desired state (this
//     instance + its agent counts), on every local change and in full after each new lease,
//     retrying with backoff after errors. Each etcd call it makes is bounded by a fraction of
//     the TTL.
//   - the watch goroutine (view.go) keeps the in-memory view with ONE watch on the root: a
//     Get of the whole root, then a Watch from the following revision; after a compaction
//     (the watch asks for a revision etcd no longer has), a watch error or a closed watch
//     channel it starts over with a new Get (counted in kasd_registry_watch_resyncs_total).
//
// # What callers may assume
//
//   - The local desired state is the source of truth. SetAgentConnections only updates it
//     under a mutex and wakes the publisher through a 1-slot channel: it never blocks on etcd,
//     also while etcd is down or the lease is lost. When the lease comes back, everything is
//     republished.
//   - Lookups (Holders, Instances, Agents, WaitForHolder, Synced) read the in-memory view
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
// kasd_registry_watch_lag_seconds and kasd_registry_publish_errors_total. etcd records no
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
