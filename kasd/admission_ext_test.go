package kasd_test

import (
	"context"
	"errors"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// TestAdmissionRefusalRetryAfter: a connection beyond the admission slots is refused at once
// with overloaded and a retry time in the close reason, which agentd reads back.
func TestAdmissionRefusalRetryAfter(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) {
		c.MaxPendingHandshakes = 1
		c.HandshakeTimeout = 3 * time.Second
	})
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost", api.ALPNAgent)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	silent, err := d.Dial(ctx, e.agentUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.CloseWithError(0, "")
	deadline := time.Now().Add(5 * time.Second)
	for gauge(t, e, "kasd_admission_handshakes") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the silent connection never took the admission slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	refused, err := d.Dial(ctx, e.agentUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer refused.CloseWithError(0, "")
	select {
	case <-refused.Context().Done():
	case <-ctx.Done():
		t.Fatal("the connection beyond the admission slots was not refused")
	}
	var appErr *quicgo.ApplicationError
	if cause := context.Cause(refused.Context()); !errors.As(cause, &appErr) || !appErr.Remote {
		t.Fatalf("closed with %v, want kasd's refusal", cause)
	}
	refusal, ok := api.ParseCloseReason(appErr.ErrorMessage)
	if !ok || refusal.Code != api.CodeOverloaded || refusal.RetryAfter < 500*time.Millisecond || refusal.RetryAfter > 2*time.Minute {
		t.Fatalf("close reason %q: %+v, want overloaded with a retry time", appErr.ErrorMessage, refusal)
	}
	if b := gauge(t, e, "kasd_admission_retry_horizon_seconds"); b <= 0 {
		t.Fatalf("retry horizon %v after a refusal", b)
	}
}

func gauge(t *testing.T, e *env, name string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
