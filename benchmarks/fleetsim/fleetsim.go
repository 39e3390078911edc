package fleetsim

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// Agent is one simulated agent: its id (Hello's replica and tokens-file id) and token.
type Agent struct {
	ID    string
	Token string
}

// Config configures a fleet.
type Config struct {
	// KasAddresses are kasd's agent endpoints. Required.
	KasAddresses []string
	// TLS trusts kasd's certificate. Required.
	TLS *tls.Config
	// Agents to run. Required.
	Agents []Agent
	// StartRate is how many agents start per second (their first dial); 0: all at once.
	StartRate float64
	// QUIC tunes every agent's transport. Zero KeepAlivePeriod and MaxIdleTimeout take agentd's
	// production defaults (quic.DefaultAgentKeepAlivePeriod, quic.DefaultAgentMaxIdleTimeout),
	// not package quic's test defaults.
	QUIC quic.Config
	// Log receives the fleet's warnings (agents that cannot be built). Default: nop.
	Log *zerolog.Logger
	// MaxConnecting bounds the agents of this fleet that connect at once (dial, handshakes,
	// Hello and Welcome; agentd.Config.ConnectSlots); the others wait their turn without
	// dialling. Real agents each have a CPU of their own; thousands of handshakes at once in one
	// process, on one core, starve each other past their timeouts and redial, which measures the
	// simulator, not kasd. 0: no limit.
	MaxConnecting int
}

// Fleet is a running set of agents.
type Fleet struct {
	agents  []*agentd.Agent
	started atomic.Int64
}

// LoadTokens reads "id token" lines (blank lines and # comments skipped).
func LoadTokens(r io.Reader) ([]Agent, error) {
	var out []Agent
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("fleetsim: tokens line %d: want \"id token\"", n)
		}
		out = append(out, Agent{ID: f[0], Token: f[1]})
	}
	return out, sc.Err()
}

// small answers every request of an agent's "svc" with a short body.
type small struct{}

func (small) ServeService(w http.ResponseWriter, r *http.Request, _ *api.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "ok\n")
}

// New builds the agents (no connection yet).
func New(cfg Config) (*Fleet, error) {
	if len(cfg.Agents) == 0 || len(cfg.KasAddresses) == 0 || cfg.TLS == nil {
		return nil, errors.New("fleetsim: agents, kas addresses and TLS are required")
	}
	q := cfg.QUIC
	if q.KeepAlivePeriod == 0 {
		q.KeepAlivePeriod = quic.DefaultAgentKeepAlivePeriod
	}
	if q.MaxIdleTimeout == 0 {
		q.MaxIdleTimeout = quic.DefaultAgentMaxIdleTimeout
	}
	f := &Fleet{agents: make([]*agentd.Agent, 0, len(cfg.Agents))}
	var slots chan struct{}
	if cfg.MaxConnecting > 0 {
		slots = make(chan struct{}, cfg.MaxConnecting)
	}
	for _, a := range cfg.Agents {
		ag, err := agentd.New(agentd.Config{
			KasAddresses: cfg.KasAddresses,
			Token:        a.Token,
			TLS:          cfg.TLS,
			QUIC:         q,
			Handlers:     map[string]agentd.ServiceHandler{"svc": small{}},
			Replica:      a.ID,
			Version:      "fleetsim",
			Log:          cfg.Log,
			// Each agent's metrics go to a private registry, as in its own process.
			Registerer:   prometheus.NewRegistry(),
			ConnectSlots: slots,
		})
		if err != nil {
			return nil, fmt.Errorf("fleetsim: agent %s: %w", a.ID, err)
		}
		f.agents = append(f.agents, ag)
	}
	return f, nil
}

// Run starts the agents at cfg's rate and keeps them until ctx ends, then returns once every
// agent's Run has returned.
func (f *Fleet) Run(ctx context.Context, rate float64) {
	var wg sync.WaitGroup
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	for _, a := range f.agents {
		if tick != nil {
			select {
			case <-ctx.Done():
			case <-tick:
			}
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() { _ = a.Run(ctx) })
		f.started.Add(1)
	}
	wg.Wait()
}

// Started is how many agents have been started.
func (f *Fleet) Started() int { return int(f.started.Load()) }

// Connected is how many agents have a connection to kasd now.
func (f *Fleet) Connected() int {
	n := 0
	for _, a := range f.agents[:f.Started()] {
		if a.Connected() > 0 {
			n++
		}
	}
	return n
}

// LoadTokensFile is LoadTokens on a file.
func LoadTokensFile(path string) ([]Agent, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return LoadTokens(fh)
}
