package registry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Resync reasons (label values of kasd_registry_watch_resyncs_total).
const (
	resyncCompacted = "compacted" // the watch asked for a revision etcd has compacted away
	resyncError     = "error"     // the watch was canceled with an error (e.g. no leader)
	resyncClosed    = "closed"    // the watch channel closed while the registry was running
)

type metrics struct {
	entries       *prometheus.GaugeVec
	leaseState    prometheus.Gauge
	leasesGranted prometheus.Counter
	resyncs       *prometheus.CounterVec
	watchLag      prometheus.Histogram
	publishErrors prometheus.Counter
	// publishLimited counts agent keys published with fewer replicas, and keys skipped
	// (session.go: limitedReplicas, limitedRefused).
	publishLimited *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kasd_registry_entries",
			Help: "Keys in the in-memory view of the registry: kind=instances counts instances/ keys, kind=agents counts agents/<agent>/<instance> keys.",
		}, []string{"kind"}),
		leaseState: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kasd_registry_lease_state",
			Help: "1 while this instance holds its etcd lease, 0 while it is lost (local agents are still served).",
		}),
		leasesGranted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasd_registry_leases_granted_total",
			Help: "etcd leases granted to this instance (1 + the number of times a lost lease was replaced).",
		}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_registry_watch_resyncs_total",
			Help: "Full re-reads of the registry prefix after the watch failed, by reason (compacted, error, closed).",
		}, []string{"reason"}),
		watchLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kasd_registry_watch_lag_seconds",
			Help: "For this instance's own writes: time from sending the write to etcd until the watched view applies it (etcd has no commit timestamp to measure others' writes against).",
			// 1 ms .. ~8 s
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasd_registry_publish_errors_total",
			Help: "Failed attempts to write this instance's desired state to etcd (each is retried).",
		}),
		publishLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_registry_publish_limited_total",
			Help: "Keys published in part or not at all, by reason: replicas_truncated (an agent's value would exceed 64 KiB: published with the replicas that fit), refused (etcd refused the key's write on its own, e.g. too large: skipped until it changes, the others are published).",
		}, []string{"reason"}),
	}
	for _, kind := range []string{"instances", "agents"} {
		m.entries.WithLabelValues(kind)
	}
	for _, reason := range []string{resyncCompacted, resyncError, resyncClosed} {
		m.resyncs.WithLabelValues(reason)
	}
	for _, reason := range []string{limitedReplicas, limitedRefused} {
		m.publishLimited.WithLabelValues(reason)
	}
	if reg != nil {
		cs := []prometheus.Collector{m.entries, m.leaseState, m.leasesGranted, m.resyncs, m.watchLag, m.publishErrors, m.publishLimited}
		for i, c := range cs {
			if err := reg.Register(c); err != nil {
				for _, done := range cs[:i] { // all or nothing
					reg.Unregister(done)
				}
				return nil, fmt.Errorf("registry: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}
