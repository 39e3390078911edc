package runner

import (
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/benchmarks/plot"
	"github.com/qkas/qkas/quic"
)

// simAgents are idle agents: each is one QUIC connection with a control stream that did
// Hello/Welcome, and nothing else (no service is called on them). All connections share the
// Dialer's one UDP socket.
type simAgents struct {
	dialer *quic.Dialer
	mu     sync.Mutex // guards conns
	conns  []*quicgo.Conn
}

// connect dials one connection per id with conc handshakes in flight, and returns how many
// failed.
func (s *simAgents) connect(ctx context.Context, addr string, ids []string, tokens map[string]string, conc int) int {
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range max(1, conc) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				qc, err := s.hello(ctx, addr, ids[i], tokens[ids[i]])
				if err != nil {
					failed.Add(1)
					continue
				}
				s.mu.Lock()
				s.conns = append(s.conns, qc)
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return int(failed.Load())
}

func (s *simAgents) hello(ctx context.Context, addr, id, token string) (*quicgo.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	qc, err := s.dialer.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	control, err := qc.OpenStreamSync(ctx)
	if err == nil {
		if dl, ok := ctx.Deadline(); ok {
			_ = control.SetDeadline(dl)
		}
		err = api.WriteFrame(control, &api.Hello{Version: api.ProtocolVersion, Token: token, AgentVersion: "qkasbench", Replica: id, Services: []string{"svc"}})
	}
	if err == nil {
		_, err = api.ReadExpect(control, api.TypeWelcome)
		_ = control.SetDeadline(time.Time{})
	}
	if err != nil {
		_ = qc.CloseWithError(quic.ConnCodeRefused, "handshake failed")
		return nil, err
	}
	return qc, nil // the control stream stays open for the connection's life
}

// closeAll closes every connection politely (CONNECTION_CLOSE, so kasd drops them at once).
func (s *simAgents) closeAll() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.CloseWithError(quic.ConnCodeShutdown, "bench over")
	}
}

// metricValue reads one unlabelled gauge from kasd's /metrics.
func metricValue(k *kasdProc, name string) (float64, error) {
	resp, err := k.client.Get(k.obsURL("/metrics"))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// waitConnections waits until kasd reports want agent connections, or until the count has not
// changed for settle (under load a few connections may die or be refused: the caller records
// the count it got). It returns the last count seen.
func waitConnections(ctx context.Context, k *kasdProc, want int, settle, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	last, since := -1, time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		v, err := metricValue(k, "kasd_agent_connections")
		if err != nil {
			return 0, err
		}
		n := int(v)
		if n == want {
			return n, nil
		}
		if n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= settle {
			return n, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last, fmt.Errorf("kasd has %d agent connections after %v, want %d", last, timeout, want)
}

func (e *env) runScale(ctx context.Context) (*ScaleResults, error) {
	res := &ScaleResults{}
	for _, n := range e.sizes.ScaleAgents {
		p, err := e.scalePoint(ctx, n)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			// Keep the other counts' figures: record this one's failure and go on.
			e.logf("scale %d agents: %v", n, err)
			res.Points = append(res.Points, ScalePoint{Agents: n, Err: err.Error()})
			continue
		}
		e.logf("scale %d agents: connect %.0f/s, RSS %.1f KiB/agent, idle CPU %.2f%% core, reconnect %.0f/s, p50 %.0f→%.0fµs",
			n, p.ConnectPerSec, p.RSSPerAgentKiB, p.IdleCPUPercent, p.ReconnectPerSec, p.LatencyAlone.P50us, p.LatencyLoaded.P50us)
		res.Points = append(res.Points, p)
	}
	var x, rss, cpu []float64
	for _, p := range res.Points {
		if p.Err != "" {
			continue
		}
		x = append(x, float64(p.Agents))
		rss = append(rss, p.RSSAfterMiB-p.RSSBeforeMiB)
		cpu = append(cpu, p.IdleCPUPercent)
	}
	name := "scale.png"
	if err := plot.Lines(filepath.Join(e.out, name), "kasd with idle agents", "connected agents",
		"RSS added (MiB) · idle CPU (% of a core)", []plot.Series{{Name: "RSS added, MiB", X: x, Y: rss}, {Name: "idle CPU, % core", X: x, Y: cpu}}, false); err != nil {
		return nil, err
	}
	res.Plots = append(res.Plots, name)
	return res, nil
}

func (e *env) scalePoint(ctx context.Context, n int) (ScalePoint, error) {
	p := ScalePoint{Agents: n}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("sim-%d", i)
	}
	st, err := e.startLocalStack(ctx, false, ids...)
	if err != nil {
		return p, err
	}
	defer st.close()
	k := st.kasd[0]
	local := e.routes(st)[1]
	client := load.NewClient(1, nil)
	defer client.CloseIdleConnections()
	get := load.Get(client, local.base+"/small", local.header)
	measure := func() (load.Summary, error) {
		if _, err := load.Run(ctx, load.Options{Requests: 100}, get); err != nil {
			return load.Summary{}, err
		}
		r, err := load.Run(ctx, load.Options{Requests: e.sizes.ScaleLatencyRequests}, get)
		if err != nil {
			return load.Summary{}, err
		}
		return r.Summarize(), nil
	}
	if p.LatencyAlone, err = measure(); err != nil {
		return p, err
	}
	time.Sleep(time.Second)
	before, err := rssBytes(k.pid())
	if err != nil {
		return p, err
	}

	tlsConf, err := quic.ClientTLSConfig(e.caFile, "127.0.0.1", api.ALPNAgent)
	if err != nil {
		return p, err
	}
	sims := &simAgents{}
	if sims.dialer, err = quic.NewDialer(tlsConf, quic.Config{}); err != nil {
		return p, err
	}
	defer func() { sims.closeAll(); _ = sims.dialer.Close() }()
	addr := k.opts.agentListen
	t0 := time.Now()
	p.ConnectFailures = sims.connect(ctx, addr, ids, st.tokens, e.sizes.ScaleDialConcurrency)
	p.ConnectSeconds = time.Since(t0).Seconds()
	p.ConnectPerSec = float64(n-p.ConnectFailures) / p.ConnectSeconds
	got, err := waitConnections(ctx, k, n-p.ConnectFailures+1, 3*time.Second, 60*time.Second)
	if err != nil {
		return p, err
	}
	p.KasdConnections = got - 1 // without the real agent
	time.Sleep(2 * time.Second) // let the handshakes' garbage be collected
	after, err := rssBytes(k.pid())
	if err != nil {
		return p, err
	}
	p.RSSBeforeMiB, p.RSSAfterMiB = float64(before)/(1<<20), float64(after)/(1<<20)
	p.RSSPerAgentKiB = float64(after-before) / 1024 / float64(max(1, p.KasdConnections))

	c0, _ := cpuTime(k.pid())
	select {
	case <-ctx.Done():
		return p, ctx.Err()
	case <-time.After(e.sizes.ScaleIdle):
	}
	c1, _ := cpuTime(k.pid())
	idle := (c1 - c0).Seconds() / e.sizes.ScaleIdle.Seconds()
	p.IdleCPUPercent = idle * 100
	p.IdleCPUusPerAgentPerSec = idle * 1e6 / float64(max(1, p.KasdConnections))

	if p.LatencyLoaded, err = measure(); err != nil {
		return p, err
	}

	// Reconnect storm: every simulated agent goes away at once and comes back.
	sims.closeAll()
	if _, err := waitConnections(ctx, k, 1, 3*time.Second, 60*time.Second); err != nil {
		return p, err
	}
	t2 := time.Now()
	p.ReconnectFailures = sims.connect(ctx, addr, ids, st.tokens, e.sizes.ScaleDialConcurrency)
	p.ReconnectSeconds = time.Since(t2).Seconds()
	p.ReconnectPerSec = float64(n-p.ReconnectFailures) / p.ReconnectSeconds
	return p, nil
}
