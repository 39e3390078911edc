package registry

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests. No etcd, gRPC or zap
// function needs ignoring: each test closes its registries, then its clients, then its
// embedded etcd (embed.Etcd.Close waits for the server's goroutines), and goleak retries
// long enough for the last gRPC transport goroutines to exit.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startEtcd starts an embedded etcd on free loopback ports in a temporary dir. It is closed at
// cleanup; register clients and registries after it so that they are closed first (an etcd
// with open watch streams waits ~7 s for them on Close).
func startEtcd(t *testing.T) *Embedded {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{
		Dir:        t.TempDir(),
		ClientAddr: "127.0.0.1:0",
		PeerAddr:   "127.0.0.1:0",
		Log:        zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func newTestClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type testRegistry struct {
	*Registry
	client  *clientv3.Client
	metrics *prometheus.Registry
}

// newTestRegistry starts a registry for instance id with its own client and metrics registry.
func newTestRegistry(t *testing.T, e *Embedded, id string, ttl time.Duration) testRegistry {
	t.Helper()
	return newTestRegistryAt(t, e.Endpoints(), id, ttl)
}

// newTestRegistryAt is newTestRegistry for any etcd's endpoints.
func newTestRegistryAt(t *testing.T, endpoints []string, id string, ttl time.Duration) testRegistry {
	t.Helper()
	c := newTestClient(t, endpoints)
	reg := prometheus.NewRegistry()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	r, err := New(c, Config{TTL: ttl}, Instance{ID: id, PeerAddr: id + ":8443", APIAddr: id + ":8080", Version: "test"}, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return testRegistry{Registry: r, client: c, metrics: reg}
}

// waitView waits, woken by Changed (never by polling), until cond holds on r's view.
func waitView(t *testing.T, r *Registry, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		ch := r.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("%s: timed out after %v; view: %v", what, timeout, r.Agents())
		}
	}
}

// agentsView renders r's view of agents as agent -> instance -> connections.
func agentsView(r *Registry) map[string]map[string]int {
	out := map[string]map[string]int{}
	for a, hs := range r.Agents() {
		out[a] = map[string]int{}
		for _, h := range hs {
			out[a][h.Instance.ID] = h.Connections
		}
	}
	return out
}

// metricValue returns the value of a counter or gauge with the given labels (0 if absent).
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustEqual[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func fmtHolders(hs []Holder) string {
	s := ""
	for _, h := range hs {
		s += fmt.Sprintf("%s=%d ", h.Instance.ID, h.Connections)
	}
	return s
}
