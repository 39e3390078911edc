package fleetsim

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLoadTokens(t *testing.T) {
	got, err := LoadTokens(strings.NewReader("# fleet\nsim-0 tok0\n\n  sim-1\ttok1  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (Agent{"sim-0", "tok0"}) || got[1] != (Agent{"sim-1", "tok1"}) {
		t.Errorf("LoadTokens = %+v", got)
	}
	for _, bad := range []string{"sim-0\n", "sim-0 tok extra\n"} {
		if _, err := LoadTokens(strings.NewReader(bad)); err == nil {
			t.Errorf("LoadTokens(%q): no error", bad)
		}
	}
}

func FuzzLoadTokens(f *testing.F) {
	f.Add("sim-0 tok0\n# c\n\nsim-1 tok1")
	f.Fuzz(func(t *testing.T, s string) {
		agents, err := LoadTokens(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, a := range agents {
			if a.ID == "" || a.Token == "" || strings.ContainsAny(a.ID+a.Token, " \t\n") {
				t.Fatalf("bad agent %+v from %q", a, s)
			}
		}
	})
}

// TestOneSocketPerAgent: every agent of the fleet dials from a UDP socket of its own, so the
// server sees one source port per agent (a fleet sharing one socket would show one).
func TestOneSocketPerAgent(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const n = 5
	var agents []Agent
	for i := range n {
		agents = append(agents, Agent{ID: "sim-" + string(rune('a'+i)), Token: "tok"})
	}
	f, err := New(Config{KasAddresses: []string{pc.LocalAddr().String()}, TLS: &tls.Config{ServerName: "kas.test"}, Agents: agents})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, 0) }()
	defer func() { cancel(); <-done }()

	sources := map[string]bool{}
	buf := make([]byte, 2048)
	_ = pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for len(sources) < n {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("saw %d source addresses, want %d: %v", len(sources), n, err)
		}
		sources[addr.String()] = true
	}
	if f.Started() != n || f.Connected() != 0 {
		t.Errorf("started %d connected %d, want %d and 0 (nothing answers)", f.Started(), f.Connected(), n)
	}
}
