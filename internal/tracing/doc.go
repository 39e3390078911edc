// Package tracing is qkas's OpenTelemetry tracing: one span per hop of a proxied request
// (kasd's client API, the holding kasd of a forwarded request, agentd), linked by the W3C
// traceparent header that travels in the request head (api.Request.Header) from hop to hop
// and on to the service.
//
// Off by default, and then free: a nil *Tracer is valid, its Start methods return a zero Span
// without allocating or touching the head, and a client's traceparent passes through to the
// service unchanged (BenchmarkStartDisabled holds the zero allocations). On, each hop starts
// a span whose parent is the traceparent it received (a new trace if none or malformed),
// writes its own span's traceparent into the head it passes on, and ends the span with the
// agent, service, route, status and error code. Spans are exported over OTLP/HTTP (protobuf)
// in batches; a collector that is down costs dropped spans, never a request.
//
// Concurrency: a Tracer is safe for concurrent use. New starts the batch processor's
// goroutine; Shutdown flushes what is queued (within its ctx) and waits for it.
package tracing
