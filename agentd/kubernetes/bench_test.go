package kubernetes_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/qkas/qkas/agentd/kubernetes"
	"github.com/qkas/qkas/agentd/kubernetes/kubetest"
	"github.com/qkas/qkas/api"
)

// BenchmarkServeService is what agentd's kubernetes service costs per request against the
// API server stand-in (TLS, HTTP/2 offered): "service" is ServeService as agentd calls it
// (internal/upstream, HTTP/1.1, under client-go's wrappers), "roundtrip" a bare round trip and
// body copy over rest.TransportFor (HTTP/2), which the service used before, and
// "roundtrip-http1" over an http.Transport restricted to HTTP/1.1. On a busy 2-core VM the
// service took 75 µs of CPU per request (stand-in included), the bare HTTP/2 round trip 116 µs;
// see benchmarks/runner's kubernetes scenario for the whole path.
//
//	go test -run '^$' -bench ServeService -benchmem ./agentd/kubernetes
func BenchmarkServeService(b *testing.B) {
	st := kubetest.NewServer(saToken)
	defer st.Close()
	st.Quiet = true
	req := &api.Request{RequestID: "bench", Meta: []api.KV{{Key: kubernetes.MetaImpersonateUser, Value: "alice"}}}
	b.Run("service", func(b *testing.B) {
		svc, err := kubernetes.New(kubernetes.Config{REST: st.RESTConfig()})
		if err != nil {
			b.Fatal(err)
		}
		defer svc.Close()
		r := httptest.NewRequest("GET", "/version", nil)
		r.Header.Set("Accept", "application/json")
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			w := discardWriter{h: http.Header{}}
			svc.ServeService(&w, r, req)
			if w.status != http.StatusOK {
				b.Fatalf("status %d", w.status)
			}
		}
	})
	h1 := func() (http.RoundTripper, error) { // the same TLS, HTTP/1.1 only
		tc, err := rest.TLSConfigFor(st.RESTConfig())
		if err != nil {
			return nil, err
		}
		tc.NextProtos = []string{"http/1.1"}
		return rest.HTTPWrappersForConfig(st.RESTConfig(), &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 64})
	}
	for name, newRT := range map[string]func() (http.RoundTripper, error){
		"roundtrip":       func() (http.RoundTripper, error) { return rest.TransportFor(st.RESTConfig()) },
		"roundtrip-http1": h1,
	} {
		b.Run(name, func(b *testing.B) { benchRoundTrip(b, st, newRT) })
	}
}

// benchRoundTrip is a GET /version on the stand-in through the transport newRT makes.
func benchRoundTrip(b *testing.B, st *kubetest.Server, newRT func() (http.RoundTripper, error)) {
	{
		rt, err := newRT()
		if err != nil {
			b.Fatal(err)
		}
		if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
			defer c.CloseIdleConnections()
		}
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			r, _ := http.NewRequest("GET", st.URL+"/version", nil)
			r.Header.Set("Accept", "application/json")
			r.Header.Set("Impersonate-User", "alice")
			resp, err := rt.RoundTrip(r)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// reportCPU reports the process's CPU time per operation (µs, client and stand-in together:
// the same stand-in work in both cases), which a busy machine disturbs less than wall time.
// Call the function it returns when the loop ends.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(b.N), "cpu-µs/op")
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// discardWriter is a ResponseWriter that keeps the status only.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}
func (w *discardWriter) Flush() {}
