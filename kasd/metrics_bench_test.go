package kasd

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkMetricsPerRequest is the metrics work kasd does for every proxied request.
func BenchmarkMetricsPerRequest(b *testing.B) {
	m := newMetrics(prometheus.NewRegistry(), &Server{})
	b.ReportAllocs()
	for b.Loop() {
		m.openStreams.Inc()
		m.streamDone(0, 1024)
		m.observe("local", 200, time.Millisecond)
	}
}
