package tracing

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// EndpointUsage is the help text of the mains' --otel-endpoint flag.
const EndpointUsage = "send OpenTelemetry traces (one span per request and hop, W3C traceparent propagated to the service) over OTLP/HTTP to this URL (http://collector:4318; /v1/traces is added to a URL without a path); default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off"

// Start is what a main calls for --otel-endpoint: it returns the Tracer the flag (or, when it
// is empty, the standard OTEL_EXPORTER_OTLP_* variables) asks for, nil when tracing is off,
// and a function that flushes and stops it within 5 s. Only mains read the environment.
func Start(endpoint string, cfg Config, log *zerolog.Logger) (*Tracer, func(), error) {
	if endpoint == "" {
		endpoint = EndpointFromEnv(os.Getenv)
	}
	cfg.Endpoint = endpoint
	t, err := New(cfg)
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
