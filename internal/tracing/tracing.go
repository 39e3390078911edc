package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/qkas/qkas/api"
)

// Header names of W3C Trace Context, in Go's canonical form (as they sit in a head).
const (
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
)

// Config configures a Tracer.
type Config struct {
	// Endpoint is the OTLP/HTTP traces URL spans are sent to, e.g.
	// http://otel-collector:4318/v1/traces ("/v1/traces" is added to a URL without a path).
	// Empty: tracing is off and New returns a nil Tracer.
	Endpoint string
	// ServiceName is the resource's service.name: "kasd" or "agentd". Required when on.
	ServiceName string
	// InstanceID is the resource's service.instance.id (kasd's instance id, agentd's replica).
	InstanceID string
	// Version is the resource's service.version.
	Version string
	// Exporter replaces the OTLP/HTTP exporter (tests). Default: OTLP/HTTP to Endpoint.
	Exporter sdktrace.SpanExporter
}

// EndpointFromEnv returns the traces URL the standard OpenTelemetry variables name, for the
// mains (libraries do not read the environment): OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, else
// OTEL_EXPORTER_OTLP_ENDPOINT with "/v1/traces" added; "" if neither is set.
func EndpointFromEnv(getenv func(string) string) string {
	if u := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); u != "" {
		return u
	}
	if u := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); u != "" {
		return strings.TrimSuffix(u, "/") + "/v1/traces"
	}
	return ""
}

// Tracer starts the spans of one process. A nil *Tracer is off.
type Tracer struct {
	tp *sdktrace.TracerProvider
	tr trace.Tracer
}

// New returns a Tracer exporting to cfg.Endpoint, or nil (off) when it is empty.
func New(cfg Config) (*Tracer, error) {
	if cfg.Endpoint == "" && cfg.Exporter == nil {
		return nil, nil
	}
	if cfg.ServiceName == "" {
		return nil, errors.New("tracing: ServiceName is required")
	}
	exp := cfg.Exporter
	if exp == nil {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("tracing: endpoint %q: want http(s)://host[:port][/path]", cfg.Endpoint)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		// New does not connect: a collector that is down only costs the spans it misses.
		if exp, err = otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(u.String())); err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", cfg.ServiceName),
		attribute.String("service.instance.id", cfg.InstanceID),
		attribute.String("service.version", cfg.Version),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		// A client that sends a sampled-out traceparent is followed; without one every
		// request is traced (the collector samples).
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
	)
	return &Tracer{tp: tp, tr: tp.Tracer("github.com/qkas/qkas")}, nil
}

// Shutdown exports the spans still queued, within ctx, and stops the exporter. Nil-safe.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// Span is one hop's span; the zero Span (tracing off) does nothing.
type Span struct {
	s trace.Span
}

// Recording reports whether the span is real (tracing on).
func (s Span) Recording() bool { return s.s != nil }

// TraceID returns the span's trace id in hex, "" when off.
func (s Span) TraceID() string {
	if s.s == nil {
		return ""
	}
	return s.s.SpanContext().TraceID().String()
}

// Outcome is what a hop reports when its span ends.
type Outcome struct {
	Agent, Service, Route, RequestID string
	Status                           int    // HTTP status; 0: unknown (a forwarded stream is spliced, not parsed)
	Code                             string // qkas error code ("" when the request succeeded)
}

// End ends the span with o's attributes; a Code or a 5xx status marks it as an error.
func (s Span) End(o Outcome) {
	if s.s == nil {
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("qkas.agent", o.Agent),
		attribute.String("qkas.service", o.Service),
		attribute.String("qkas.route", o.Route),
		attribute.String("qkas.request_id", o.RequestID),
	}
	if o.Status != 0 {
		attrs = append(attrs, attribute.Int("http.response.status_code", o.Status))
	}
	if o.Code != "" {
		attrs = append(attrs, attribute.String("qkas.error_code", o.Code))
	}
	s.s.SetAttributes(attrs...)
	if o.Code != "" || o.Status >= 500 {
		s.s.SetStatus(codes.Error, o.Code)
	}
	s.s.End()
}

var propagator = propagation.TraceContext{}

// StartHead starts a span named name, child of the traceparent in *head (a request head's
// header fields), and rewrites the head's traceparent to the new span, so that the next hop
// is its child. Off (nil t): nothing, no allocation.
func (t *Tracer) StartHead(name string, kind trace.SpanKind, head *[]api.KV) Span {
	if t == nil {
		return Span{}
	}
	c := kvCarrier{head}
	ctx := propagator.Extract(context.Background(), c)
	ctx, span := t.tr.Start(ctx, name, trace.WithSpanKind(kind))
	propagator.Inject(ctx, c)
	return Span{span}
}

// StartHeader is StartHead for an http.Header (agentd, whose request reaches the service as
// an *http.Request).
func (t *Tracer) StartHeader(name string, kind trace.SpanKind, h http.Header) Span {
	if t == nil {
		return Span{}
	}
	c := propagation.HeaderCarrier(h)
	ctx := propagator.Extract(context.Background(), c)
	ctx, span := t.tr.Start(ctx, name, trace.WithSpanKind(kind))
	propagator.Inject(ctx, c)
	return Span{span}
}

// Span kinds, so that callers need not import the trace package.
const (
	KindServer = trace.SpanKindServer
	KindClient = trace.SpanKindClient
)

// kvCarrier reads and writes header fields of a request head, names case-insensitively.
type kvCarrier struct{ kvs *[]api.KV }

func (c kvCarrier) Get(key string) string {
	for _, kv := range *c.kvs {
		if strings.EqualFold(kv.Key, key) {
			return kv.Value
		}
	}
	return ""
}

// Set replaces every field named key by one with value.
func (c kvCarrier) Set(key, value string) {
	out := (*c.kvs)[:0]
	done := false
	for _, kv := range *c.kvs {
		if strings.EqualFold(kv.Key, key) {
			if done {
				continue
			}
			kv, done = api.KV{Key: kv.Key, Value: value}, true
		}
		out = append(out, kv)
	}
	if !done {
		out = append(out, api.KV{Key: http.CanonicalHeaderKey(key), Value: value})
	}
	*c.kvs = out
}

func (c kvCarrier) Keys() []string {
	keys := make([]string, len(*c.kvs))
	for i, kv := range *c.kvs {
		keys[i] = kv.Key
	}
	return keys
}
