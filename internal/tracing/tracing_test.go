package tracing_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/internal/tracing"
)

const (
	clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan  = "00f067aa0ba902b7"
	clientTP    = "00-" + clientTrace + "-" + clientSpan + "-01"
)

func newTestTracer(t testing.TB) (*tracing.Tracer, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := tracing.New(tracing.Config{ServiceName: "kasd", Exporter: keep{exp}})
	if err != nil {
		t.Fatal(err)
	}
	return tr, exp
}

// ended shuts tr down (flushing its batch) and returns the spans exported.
func ended(t *testing.T, tr *tracing.Tracer, exp *tracetest.InMemoryExporter) tracetest.SpanStubs {
	t.Helper()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	return exp.GetSpans()
}

func get(kvs []api.KV, key string) []string {
	var out []string
	for _, kv := range kvs {
		if strings.EqualFold(kv.Key, key) {
			out = append(out, kv.Value)
		}
	}
	return out
}

// TestStartHead: the head's traceparent (any case) is the parent, and is replaced by exactly
// one traceparent of the new span in the same trace; tracestate and other fields stay; a
// missing or malformed traceparent starts a new trace.
func TestStartHead(t *testing.T) {
	tr, exp := newTestTracer(t)
	head := []api.KV{{Key: "Accept", Value: "*/*"}, {Key: "traceparent", Value: clientTP},
		{Key: "Tracestate", Value: "vendor=x"}, {Key: "Traceparent", Value: "00-ffffffffffffffffffffffffffffffff-0000000000000001-01"}}
	sp := tr.StartHead("kasd.proxy", tracing.KindServer, &head)
	if sp.TraceID() != clientTrace {
		t.Fatalf("trace %s, want the client's", sp.TraceID())
	}
	sp.End(tracing.Outcome{Agent: "a", Service: "web", Route: "local", Status: 502, Code: "agent_failed"})
	fresh := []api.KV{{Key: "Accept", Value: "*/*"}}
	sp2 := tr.StartHead("kasd.proxy", tracing.KindServer, &fresh)
	sp2.End(tracing.Outcome{Status: 200})
	bad := []api.KV{{Key: "Traceparent", Value: "00-nonsense"}}
	sp3 := tr.StartHead("kasd.proxy", tracing.KindServer, &bad)
	sp3.End(tracing.Outcome{Status: 200})

	spans := ended(t, tr, exp)
	if len(spans) != 3 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	if got := s.Parent.SpanID().String(); got != clientSpan {
		t.Errorf("parent %s, want %s", got, clientSpan)
	}
	tps := get(head, "traceparent")
	if want := "00-" + clientTrace + "-" + s.SpanContext.SpanID().String() + "-01"; !slices.Equal(tps, []string{want}) {
		t.Errorf("head traceparent %q, want [%s]", tps, want)
	}
	if ts := get(head, "tracestate"); !slices.Equal(ts, []string{"vendor=x"}) || len(get(head, "accept")) != 1 {
		t.Errorf("other fields changed: %v", head)
	}
	if s.Status.Code.String() != "Error" {
		t.Errorf("a failed request's span status %v", s.Status)
	}
	attrs := map[string]string{}
	for _, a := range s.Attributes {
		attrs[string(a.Key)] = a.Value.String()
	}
	for k, v := range map[string]string{"qkas.agent": "a", "qkas.service": "web", "qkas.route": "local", "http.response.status_code": "502", "qkas.error_code": "agent_failed"} {
		if attrs[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, attrs[k], v)
		}
	}
	for i, h := range [][]api.KV{fresh, bad} {
		sc := spans[i+1].SpanContext
		if spans[i+1].Parent.IsValid() || sc.TraceID().String() == clientTrace {
			t.Errorf("span %d: a new trace was expected, got parent %v", i+1, spans[i+1].Parent)
		}
		if tps := get(h, "traceparent"); !slices.Equal(tps, []string{"00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"}) {
			t.Errorf("span %d: head traceparent %q", i+1, tps)
		}
	}
}

// TestStartHeader: agentd's variant on an http.Header.
func TestStartHeader(t *testing.T) {
	tr, exp := newTestTracer(t)
	h := http.Header{"Traceparent": {clientTP}}
	tr.StartHeader("agentd.request", tracing.KindServer, h).End(tracing.Outcome{Status: 200})
	spans := ended(t, tr, exp)
	if len(spans) != 1 || spans[0].Parent.SpanID().String() != clientSpan {
		t.Fatalf("spans %v", spans)
	}
	if got := h.Get("Traceparent"); !strings.Contains(got, spans[0].SpanContext.SpanID().String()) {
		t.Errorf("header traceparent %q is not the new span's", got)
	}
}

// TestDisabledIsFree: off (a nil Tracer), the hooks allocate nothing and leave the head alone:
// the client's traceparent reaches the service unchanged.
func TestDisabledIsFree(t *testing.T) {
	var tr *tracing.Tracer
	head := []api.KV{{Key: "Traceparent", Value: clientTP}}
	h := http.Header{"Traceparent": {clientTP}}
	allocs := testing.AllocsPerRun(100, func() {
		sp := tr.StartHead("kasd.proxy", tracing.KindServer, &head)
		if sp.Recording() {
			t.Fatal("a nil Tracer recorded")
		}
		sp.End(tracing.Outcome{Agent: "a", Status: 200})
		tr.StartHeader("agentd.request", tracing.KindServer, h).End(tracing.Outcome{})
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request with tracing off", allocs)
	}
	if len(head) != 1 || head[0].Value != clientTP || h.Get("Traceparent") != clientTP {
		t.Errorf("head changed with tracing off: %v %v", head, h)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestNewOff: no endpoint is off; a bad endpoint is an error.
func TestNewOff(t *testing.T) {
	if tr, err := tracing.New(tracing.Config{ServiceName: "kasd"}); tr != nil || err != nil {
		t.Fatalf("no endpoint: %v %v", tr, err)
	}
	if _, err := tracing.New(tracing.Config{ServiceName: "kasd", Endpoint: "collector:4318"}); err == nil {
		t.Fatal("an endpoint without a scheme was accepted")
	}
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}
	if got := tracing.EndpointFromEnv(func(k string) string { return env[k] }); got != "http://c:4318/v1/traces" {
		t.Errorf("from OTEL_EXPORTER_OTLP_ENDPOINT: %q", got)
	}
	env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:4318/x"
	if got := tracing.EndpointFromEnv(func(k string) string { return env[k] }); got != "http://t:4318/x" {
		t.Errorf("from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: %q", got)
	}
}

// BenchmarkHop is one hop's tracing work (start from the head, end with the outcome), off and
// on (spans to a discarding exporter).
func BenchmarkHop(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		var tr *tracing.Tracer
		if on {
			name = "on"
			var err error
			if tr, err = tracing.New(tracing.Config{ServiceName: "kasd", Exporter: discard{}}); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(name, func(b *testing.B) {
			head := make([]api.KV, 0, 8)
			b.ReportAllocs()
			for b.Loop() {
				head = append(head[:0], api.KV{Key: "Accept", Value: "*/*"}, api.KV{Key: "Traceparent", Value: clientTP})
				sp := tr.StartHead("kasd.proxy", tracing.KindServer, &head)
				if sp.Recording() {
					sp.End(tracing.Outcome{Agent: "a", Service: "web", Route: "local", RequestID: "r", Status: 200})
				}
			}
		})
		_ = tr.Shutdown(context.Background())
	}
}

type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// keep is an in-memory exporter whose Shutdown keeps the spans (tracetest's resets them).
type keep struct{ *tracetest.InMemoryExporter }

func (keep) Shutdown(context.Context) error { return nil }
