package quic

import (
	"testing"
	"time"
)

// TestPeerKeepsAlive: a side that leaves keep-alives to its peer gives quic-go no keep-alive
// period (quic-go then sends no PING of its own), keeps its idle timeout, and still validates
// the period it expects from the peer.
func TestPeerKeepsAlive(t *testing.T) {
	c := Config{KeepAlivePeriod: 25 * time.Second, MaxIdleTimeout: time.Minute, PeerKeepsAlive: true}
	q := c.QUICConfig()
	if q.KeepAlivePeriod != 0 || q.MaxIdleTimeout != time.Minute {
		t.Errorf("QUICConfig: keep-alive %v, idle timeout %v; want 0 and 1m", q.KeepAlivePeriod, q.MaxIdleTimeout)
	}
	if got := c.WithDefaults().KeepAlivePeriod; got != 25*time.Second {
		t.Errorf("expected period %v, want 25s", got)
	}
	if (Config{PeerKeepsAlive: true}).QUICConfig().KeepAlivePeriod != 0 {
		t.Error("the default period was given to quic-go")
	}
	if err := (Config{KeepAlivePeriod: time.Minute, MaxIdleTimeout: time.Minute, PeerKeepsAlive: true}).Validate(); err == nil {
		t.Error("an expected period not below the idle timeout was accepted")
	}
	if (Config{KeepAlivePeriod: 25 * time.Second, MaxIdleTimeout: time.Minute}).QUICConfig().KeepAlivePeriod != 25*time.Second {
		t.Error("without PeerKeepsAlive the period must reach quic-go")
	}
}
