package kasd_test

import (
	"strings"
	"testing"
	"time"
)

// A holder's refusal is its word to the kasd that asked, never an answer for the client: when
// every holder refused a request (the registry still names a kasd that no longer holds the
// agent: its only agentd was paused and the connection closed as dead) and no holder appeared
// within the route timeout, the client gets 503 agent_not_connected with Retry-After, not the
// holder's not_holder (found by an independent fault run: 126 not_holder and 96 shutting_down
// answers to clients after a single-replica agentd was killed or paused).
func TestRefusedEverywhereIsAgentNotConnected(t *testing.T) {
	f := newFleetEnv(t, 2)
	holder, origin := f.nodes[0], f.nodes[1]
	// kas-0 publishes alpha without holding it: what the registry says between a holder's
	// loss of its last connection and the update of its key.
	holder.reg.SetAgentConnections("alpha", 1)
	f.waitHolders("alpha", "kas-0")
	start := time.Now()
	code, body := f.get(origin, "alpha", "/")
	if code != 503 || !strings.Contains(body, `"agent_not_connected"`) {
		t.Fatalf("%d %s after %v; want 503 agent_not_connected", code, body, time.Since(start))
	}
	t.Logf("%d %s", code, body)
}
