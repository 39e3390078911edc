package suite

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The load's HTTP connections are closed at the end of Run, but their loops may still
		// be unwinding when goleak first looks.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// TestValidate: defaults fill a zero Config; bad sizes and unknown scenarios are refused.
func TestValidate(t *testing.T) {
	var c Config
	if err := c.Validate(); err != nil || c.Agents != 30 || len(c.Scenarios) != len(AllScenarios()) {
		t.Fatalf("zero config: %v, %+v", err, c)
	}
	bad := Config{Agents: 1, Scenarios: []string{"steady", "meteor"}}
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "agents") || !strings.Contains(err.Error(), `"meteor"`) {
		t.Fatalf("bad config: %v", err)
	}
}

// TestQuickChaos is `make chaos` made small enough for `make test`: the real binaries, a real
// three-member etcd, every process in its own network namespace, under load, with placement,
// a kasd SIGTERM drain (0 lost), agent kill -9, kasd kill -9 and a partition. kasd-join is
// left to `make chaos` (docs/faults.md); set QKAS_CHAOS_ALL=1 to run it here too. The
// bounds are the suite's own, which count requests against what the fault could take, never
// against time (a loaded machine makes everything slower, not less correct). Needs root, etcd
// (Debian's etcd-server), nft (nftables) and ip (iproute2); it skips without them.
func TestQuickChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault suite runs real processes for about a minute; not with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("the fault suite needs root (network namespaces, nftables); run as root, or `make chaos`")
	}
	for _, bin := range []string{"etcd", "nft", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not on PATH: apt-get install etcd-server nftables iproute2", bin)
		}
	}
	var out bytes.Buffer
	cfg := Config{
		ModuleDir: "../..", Agents: 6, Concurrency: 60,
		Duration: 4 * time.Second, Warmup: time.Second, Tail: 2 * time.Second,
		KillHold: 2 * time.Second, CutHold: 3 * time.Second,
		Scenarios: []string{"placement", "kasd-term", "agent-kill", "kasd-kill", "partition"},
		Out:       &out,
	}
	if os.Getenv("QKAS_CHAOS_ALL") == "1" {
		cfg.Scenarios = []string{"placement", "kasd-term", "agent-kill", "kasd-kill", "partition", "kasd-join"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	err := Run(ctx, cfg)
	t.Logf("fault suite (%v):\n%s", time.Since(start).Round(time.Second), out.String())
	if errors.Is(err, ErrHostStalled) {
		// kasd's peer links time out after 1 s of silence: a host that stalls that long (a
		// machine shared with other heavy jobs) adds a fault of its own, and the bounds are
		// for one fault. Inconclusive, not failed; a bound broken without a stall fails.
		t.Skipf("inconclusive: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}
