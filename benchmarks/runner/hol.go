package runner

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	//lint:file-ignore SA1019 the head-of-line baseline is HTTP/2 over one TCP connection with x/net/http2 and h2c, as in every earlier result; moving it to net/http's Protocols is a change of the baseline
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/benchmarks/plot"
)

// The head-of-line scenario's fixed addresses, inside namespaces the runner creates.
const (
	holServiceAddr = "127.0.0.1:8080"      // agent namespace
	holKasAgent    = vethKasAddr + ":8150" // kas namespace, UDP
	holKasAPI      = "127.0.0.1:8151"      // kas namespace
	holKasObs      = "127.0.0.1:8153"      // kas namespace
	holH2Agent     = vethAgentAddr + ":8443"
)

// h2Baseline is what gRPC-style tunnels do: every request multiplexed over ONE TCP connection
// with HTTP/2. A front proxy (listening on loopback here, dialling from the kas namespace) sends
// requests over h2c to an agent-side proxy in the agent namespace, which calls the service.
type h2Baseline struct {
	agentSide *httpServer
	front     *httpServer
	tr        *http2.Transport
	dials     atomic.Int64
}

// quietLog drops the proxies' "context canceled" lines at the end of each bulk transfer.
var quietLog = log.New(io.Discard, "", 0)

func startH2Baseline(v *veth) (*h2Baseline, error) {
	b := &h2Baseline{}
	svc := &url.URL{Scheme: "http", Host: holServiceAddr}
	agentProxy := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(svc) },
		Transport: &http.Transport{DialContext: v.agent.Dial, MaxIdleConnsPerHost: 256},
		ErrorLog:  quietLog,
	}
	ln, err := v.agent.Listen("tcp", holH2Agent)
	if err != nil {
		return nil, err
	}
	b.agentSide = serveHTTP(ln, h2c.NewHandler(agentProxy, &http2.Server{}))

	b.tr = &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			b.dials.Add(1)
			return v.kas.Dial(ctx, "tcp", holH2Agent)
		},
	}
	agentURL := &url.URL{Scheme: "http", Host: holH2Agent}
	frontProxy := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(agentURL) },
		Transport: b.tr,
		ErrorLog:  quietLog,
	}
	fln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.close()
		return nil, err
	}
	b.front = serveHTTP(fln, frontProxy)
	return b, nil
}

func (b *h2Baseline) close() {
	b.front.close()
	if b.tr != nil {
		b.tr.CloseIdleConnections()
	}
	b.agentSide.close()
}

func (e *env) runHOL(ctx context.Context) (*HOLResults, error) {
	if err := checkNetnsTools(); err != nil {
		return nil, skipError{err.Error()}
	}
	v, err := newVeth(ctx)
	if err != nil {
		return nil, skipError{err.Error()}
	}
	defer v.close()

	ln, err := v.agent.Listen("tcp", holServiceAddr)
	if err != nil {
		return nil, err
	}
	svc := serveHTTP(ln, serviceHandler(e.sizes.BodyBytes))
	defer svc.close()

	dir := e.subdir("hol")
	tokensFile := filepath.Join(dir, "agent-tokens.yaml")
	tokens, err := writeTokens(tokensFile, []string{benchAgent, tcpAgent})
	if err != nil {
		return nil, err
	}
	tokenFile, err := writeToken(dir, benchAgent, tokens[benchAgent])
	if err != nil {
		return nil, err
	}
	k, err := e.startKasd(ctx, kasdOpts{id: "kasd-hol", ns: v.kas, agentListen: holKasAgent, apiListen: holKasAPI, obsListen: holKasObs, tokensFile: tokensFile})
	if err != nil {
		return nil, err
	}
	defer k.stop(3 * time.Second)
	agent, err := e.startAgent(agentOpts{id: benchAgent, ns: v.agent, kas: []string{holKasAgent}, tokenFile: tokenFile,
		services: []string{"svc=http://" + holServiceAddr}})
	if err != nil {
		return nil, err
	}
	defer agent.stop(3 * time.Second)
	if err := e.waitAgent(ctx, k, benchAgent, 1, agent); err != nil {
		return nil, err
	}
	h2, err := startH2Baseline(v)
	if err != nil {
		return nil, err
	}
	defer h2.close()
	tcpAgentProc, tcpErr := e.startTCPAgent(ctx, v.agent, k, holKasAgent, tokens[tcpAgent], "http://"+holServiceAddr) // tcp.go
	if tcpErr == nil {
		defer tcpAgentProc.stop(3 * time.Second)
	}

	type system struct {
		name string
		r    route
		dial func(ctx context.Context, network, addr string) (net.Conn, error)
	}
	systems := []system{
		{name: "qkas", r: route{name: "qkas", base: k.apiURL("/api/v1/agents/" + benchAgent + "/proxy/svc"),
			header: http.Header{"Authorization": {"Bearer " + e.jwt}}}, dial: v.kas.Dial},
		{name: "h2-tcp", r: route{name: "h2-tcp", base: "http://" + h2.front.addr()}},
	}
	if tcpErr == nil { // the same qkas, the agent over the TCP transport
		systems = append(systems, system{name: holQkasTCP, r: route{name: holQkasTCP, base: k.apiURL("/api/v1/agents/" + tcpAgent + "/proxy/svc"),
			header: http.Header{"Authorization": {"Bearer " + e.jwt}}}, dial: v.kas.Dial})
	}
	for _, s := range systems {
		c := load.NewClient(1, s.dial)
		err := waitRoute(ctx, s.r, c)
		c.CloseIdleConnections()
		if err != nil {
			return nil, err
		}
	}
	res := &HOLResults{Concurrency: e.sizes.HOLConcurrency, DurationS: e.sizes.HOLDuration.Seconds(), BulkRate: e.sizes.HOLBulkRate,
		SlowReaders: e.sizes.HOLSlowReaders, SlowRate: e.sizes.HOLSlowRate}
	step := 0 // alternates the systems' order
	for _, loss := range e.sizes.HOLLossPercent {
		if err := v.setLoss(ctx, loss); err != nil {
			return nil, skipError{"nftables: " + err.Error()}
		}
		bgs := []holBackground{{name: holNone}, {name: holBulk, readers: 1, rate: e.sizes.HOLBulkRate}}
		if loss == 0 && e.sizes.HOLSlowReaders > 0 {
			bgs = append(bgs, holBackground{name: holSlow, readers: e.sizes.HOLSlowReaders, rate: e.sizes.HOLSlowRate})
		}
		for _, bg := range bgs {
			for j := range systems {
				s := systems[j]
				if step%2 == 1 {
					s = systems[len(systems)-1-j]
				}
				p, err := e.holPoint(ctx, s.r, s.dial, loss, bg)
				if err != nil {
					return nil, fmt.Errorf("%s at %g%% loss, %s: %w", s.name, loss, bg.name, err)
				}
				p.System = s.name
				e.logf("hol loss=%g%% %-6s %-12s %s background %.1f MB/s", loss, s.name, bg.name, p.Summary, p.BulkMBps)
				res.Points = append(res.Points, p)
			}
			step++
		}
	}
	_ = v.setLoss(ctx, 0)
	res.H2TCPConnections = int(h2.dials.Load())

	var series []plot.Series
	for _, sys := range []string{"qkas", "h2-tcp", holQkasTCP} {
		p999 := plot.Series{Name: sys + " p99.9"}
		p99 := plot.Series{Name: sys + " p99"}
		p50 := plot.Series{Name: sys + " p50"}
		alone := plot.Series{Name: sys + " p99 without bulk"}
		for _, loss := range e.sizes.HOLLossPercent {
			if p := res.find(sys, loss, holBulk); p != nil {
				p999.X, p999.Y = append(p999.X, loss), append(p999.Y, p.P999us)
				p99.X, p99.Y = append(p99.X, loss), append(p99.Y, p.P99us)
				p50.X, p50.Y = append(p50.X, loss), append(p50.Y, p.P50us)
			}
			if p := res.find(sys, loss, holNone); p != nil {
				alone.X, alone.Y = append(alone.X, loss), append(alone.Y, p.P99us)
			}
		}
		series = append(series, p999, p99, p50, alone)
	}
	name := "hol-p99-vs-loss.png"
	if err := plot.Lines(filepath.Join(e.out, name), "Small requests while a bulk download shares the connection",
		"packet loss on the veth, each direction (%)", "latency (µs, log scale)", series, true); err != nil {
		return nil, err
	}
	res.Plots = append(res.Plots, name)
	return res, nil
}

// holBackground is what runs next to the small requests: readers downloads, each read at rate.
type holBackground struct {
	name    string
	readers int
	rate    int64
}

// holPoint runs small requests for HOLDuration while bg's downloads, each read at its pace, run
// on the same path (each over its own client connection to the front, all through the one
// agent connection).
func (e *env) holPoint(ctx context.Context, r route, dial func(context.Context, string, string) (net.Conn, error), loss float64, bg holBackground) (HOLPoint, error) {
	p := HOLPoint{LossPercent: loss, Background: bg.name, Readers: bg.readers, ReadRate: bg.rate}
	bulkCtx, stopBulk := context.WithCancel(ctx)
	defer stopBulk()
	var bulkBytes atomic.Int64
	var wg sync.WaitGroup
	bulkClient := load.NewClient(max(1, bg.readers), dial)
	defer bulkClient.CloseIdleConnections()
	bulkStart := time.Now()
	for range bg.readers {
		wg.Go(func() {
			for bulkCtx.Err() == nil {
				req, _ := http.NewRequestWithContext(bulkCtx, http.MethodGet, r.base+"/bytes?n=1099511627776", nil)
				for k, v := range r.header {
					req.Header[k] = v
				}
				resp, err := bulkClient.Do(req)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				readPaced(bulkCtx, resp.Body, bg.rate, &bulkBytes)
				resp.Body.Close()
			}
		})
	}
	if bg.readers > 0 {
		time.Sleep(300 * time.Millisecond) // the downloads are under way
	}
	small := load.NewClient(e.sizes.HOLConcurrency, dial)
	defer small.CloseIdleConnections()
	get := load.Get(small, r.base+"/small", r.header)
	res, err := load.Run(ctx, load.Options{Concurrency: e.sizes.HOLConcurrency, Duration: e.sizes.HOLDuration}, func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return get(rctx)
	})
	stopBulk()
	wg.Wait()
	if err != nil {
		return p, err
	}
	p.Summary = res.Summarize()
	if bg.readers > 0 {
		p.BulkMBps = float64(bulkBytes.Load()) / time.Since(bulkStart).Seconds() / 1e6
	}
	return p, nil
}

// readPaced reads body at no more than rate bytes/s until ctx ends or the body does.
func readPaced(ctx context.Context, body io.Reader, rate int64, n *atomic.Int64) {
	buf := make([]byte, 32<<10)
	start := time.Now()
	var got int64
	for ctx.Err() == nil {
		k, err := body.Read(buf)
		got += int64(k)
		n.Add(int64(k))
		if err != nil {
			return
		}
		if ahead := time.Duration(float64(got)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(ahead):
			}
		}
	}
}
