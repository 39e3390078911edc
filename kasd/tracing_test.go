package kasd_test

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/quic"
)

// otlpCollector is an OTLP/HTTP traces endpoint that keeps every span it receives, with the
// service.name of its resource.
type otlpCollector struct {
	*httptest.Server
	mu    sync.Mutex
	spans map[string]*tracepb.Span // by span name
	svc   map[string]string        // span name -> service.name
}

func newOTLPCollector(t *testing.T) *otlpCollector {
	c := &otlpCollector{spans: map[string]*tracepb.Span{}, svc: map[string]string{}}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
			t.Errorf("collector got %s %s (%s): %v", r.Method, r.URL.Path, r.Header.Get("Content-Type"), err)
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			var svc string
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					c.spans[sp.GetName()] = sp
					c.svc[sp.GetName()] = svc
				}
			}
		}
		c.mu.Unlock()
		b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(b)
	}))
	t.Cleanup(c.Close)
	return c
}

func spanAttr(sp *tracepb.Span, key string) (string, int64) {
	for _, a := range sp.GetAttributes() {
		if a.GetKey() == key {
			return a.GetValue().GetStringValue(), a.GetValue().GetIntValue()
		}
	}
	return "", 0
}

// TestTracingAcrossHops: a client's W3C traceparent reaches kas-1, which forwards to kas-0, which
// holds the agent; the service gets a traceparent too. An OTLP/HTTP collector receives one span
// from each hop and step (kas-1's kasd.proxy and kasd.route, kas-0's kasd.forward, agentd's
// agentd.request and agentd.upstream), all in the client's trace, each the child of the one
// before, with the request's agent, service, route and status; the service's parent is agentd's
// upstream span.
func TestTracingAcrossHops(t *testing.T) {
	col := newOTLPCollector(t)
	newTracer := func(svc, id string) *tracing.Tracer {
		tr, err := tracing.New(tracing.Config{Endpoint: col.URL, ServiceName: svc, InstanceID: id})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	f := newFleetEnv(t, 0)
	f.tracers = map[string]*tracing.Tracer{"kas-0": newTracer("kasd", "kas-0"), "kas-1": newTracer("kasd", "kas-1")}
	f.nodes = append(f.nodes, f.startNode("kas-0"), f.startNode("kas-1"))

	var svcTraceparent string
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svcTraceparent = r.Header.Get("Traceparent")
		_, _ = io.WriteString(w, "ok")
	}))
	defer svc.Close()
	agentTracer := newTracer("agentd", "pod-1")
	tlsConf, err := quic.ClientTLSConfig(f.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(svc.URL)
	a, err := agentd.New(agentd.Config{
		KasAddresses: []string{f.nodes[0].agentLn.Addr().String()}, Token: f.tokens["alpha"], TLS: tlsConf,
		Replica: "pod-1", Services: map[string]*url.URL{"web": u}, Connections: 1, Tracer: agentTracer,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")

	const (
		clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		clientSpan  = "00f067aa0ba902b7"
	)
	req, _ := http.NewRequest("GET", f.nodes[1].api.URL+"/api/v1/agents/alpha/proxy/web/x", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	req.Header.Set("Traceparent", "00-"+clientTrace+"-"+clientSpan+"-01")
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}

	// Shutdown flushes each process's batch to the collector.
	for _, tr := range []*tracing.Tracer{f.tracers["kas-1"], f.tracers["kas-0"], agentTracer} {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := tr.Shutdown(sctx); err != nil {
			t.Fatal(err)
		}
		scancel()
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	entry, fwd, agent := col.spans["kasd.proxy"], col.spans["kasd.forward"], col.spans["agentd.request"]
	route, upstream := col.spans["kasd.route"], col.spans["agentd.upstream"]
	if entry == nil || fwd == nil || agent == nil || route == nil || upstream == nil {
		t.Fatalf("spans received: %v", col.spans)
	}
	id := func(b []byte) string { return hex.EncodeToString(b) }
	for name, sp := range map[string]*tracepb.Span{"kasd.proxy": entry, "kasd.route": route, "kasd.forward": fwd, "agentd.request": agent, "agentd.upstream": upstream} {
		if got := id(sp.GetTraceId()); got != clientTrace {
			t.Errorf("%s: trace %s, want the client's %s", name, got, clientTrace)
		}
		if agentID, _ := spanAttr(sp, "qkas.agent"); agentID != "alpha" {
			t.Errorf("%s: agent %q", name, agentID)
		}
		if s, _ := spanAttr(sp, "qkas.service"); s != "web" {
			t.Errorf("%s: service %q", name, s)
		}
		wantKind := tracepb.Span_SPAN_KIND_SERVER
		if name == "kasd.route" || name == "agentd.upstream" {
			wantKind = tracepb.Span_SPAN_KIND_CLIENT
		}
		if sp.GetKind() != wantKind {
			t.Errorf("%s: kind %v, want %v", name, sp.GetKind(), wantKind)
		}
	}
	for _, link := range []struct {
		child, parent *tracepb.Span
		name          string
		want          string
	}{
		{entry, nil, "kasd.proxy", clientSpan},
		{route, entry, "kasd.route", id(entry.GetSpanId())},
		{fwd, route, "kasd.forward", id(route.GetSpanId())},
		{agent, fwd, "agentd.request", id(fwd.GetSpanId())},
		{upstream, agent, "agentd.upstream", id(agent.GetSpanId())},
	} {
		if got := id(link.child.GetParentSpanId()); got != link.want {
			t.Errorf("%s: parent %s, want %s", link.name, got, link.want)
		}
	}
	if col.svc["kasd.proxy"] != "kasd" || col.svc["agentd.request"] != "agentd" {
		t.Errorf("services: %v", col.svc)
	}
	if route, _ := spanAttr(entry, "qkas.route"); route != "forwarded" {
		t.Errorf("entry route %q", route)
	}
	if _, status := spanAttr(entry, "http.response.status_code"); status != 200 {
		t.Errorf("entry status %d", status)
	}
	if _, status := spanAttr(agent, "http.response.status_code"); status != 200 {
		t.Errorf("agentd status %d", status)
	}
	if _, status := spanAttr(upstream, "http.response.status_code"); status != 200 {
		t.Errorf("agentd upstream status %d", status)
	}
	if want := "00-" + clientTrace + "-" + id(upstream.GetSpanId()) + "-01"; svcTraceparent != want {
		t.Errorf("service got traceparent %q, want %q (agentd's upstream span)", svcTraceparent, want)
	}
}
