package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/internal/tracing"
)

// otelEndpointUsage is the help text of --otel-endpoint.
const otelEndpointUsage = "send OpenTelemetry traces (one span per request and hop, W3C traceparent propagated to the service) over OTLP/HTTP to this URL (http://collector:4318; /v1/traces is added to a URL without a path); default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off"

// startTracing returns the tracer --otel-endpoint (or the standard OTEL_EXPORTER_OTLP_*
// variables) asks for, nil when tracing is off, and a function that flushes and stops it.
func startTracing(endpoint, instance string, log *zerolog.Logger) (*tracing.Tracer, func(), error) {
	if endpoint == "" {
		endpoint = tracing.EndpointFromEnv(os.Getenv)
	}
	t, err := tracing.New(tracing.Config{Endpoint: endpoint, ServiceName: "agentd", InstanceID: instance, Version: version})
	if err != nil {
		return nil, nil, fmt.Errorf("--otel-endpoint: %w", err)
	}
	if t != nil {
		log.Info().Str("otel_endpoint", endpoint).Msg("tracing on: spans exported over OTLP/HTTP")
	}
	return t, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := t.Shutdown(ctx); err != nil {
			log.Warn().Err(err).Msg("flushing traces")
		}
	}, nil
}
