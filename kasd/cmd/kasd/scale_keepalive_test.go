package main

import (
	"flag"
	"testing"
	"time"

	"github.com/qkas/qkas/quic"
)

// TestAgentListenerLeavesKeepAlivesToAgents: the agent listener's QUIC configuration sends no
// keep-alive of kasd's own (agents send them) and keeps the flags' period and idle timeout.
func TestAgentListenerLeavesKeepAlivesToAgents(t *testing.T) {
	var s scaleOptions
	fs := flag.NewFlagSet("kasd", flag.ContinueOnError)
	s.register(fs)
	if err := fs.Parse([]string{"--agent-keep-alive-period", "20s", "--agent-idle-timeout", "50s"}); err != nil {
		t.Fatal(err)
	}
	c := s.quic(quic.Config{})
	if !c.PeerKeepsAlive || c.KeepAlivePeriod != 20*time.Second || c.MaxIdleTimeout != 50*time.Second {
		t.Errorf("agent listener config: PeerKeepsAlive %v, period %v, idle %v", c.PeerKeepsAlive, c.KeepAlivePeriod, c.MaxIdleTimeout)
	}
	if q := c.QUICConfig(); q.KeepAlivePeriod != 0 || q.MaxIdleTimeout != 50*time.Second {
		t.Errorf("quic-go config: keep-alive %v, idle %v", q.KeepAlivePeriod, q.MaxIdleTimeout)
	}
}
