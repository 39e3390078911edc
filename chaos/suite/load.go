package suite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// requestTimeout bounds every request of the load, so that a hung request is measured, not
// waited for forever. Far above every bound.
const requestTimeout = 30 * time.Second

// balancer is the load balancer in front of the kasd APIs: a kasd is in rotation while its
// /readyz answers 200 (polled every lbPeriod) and the suite has not taken it out.
type balancer struct {
	f        *fleet
	ready    []atomic.Bool
	excluded []atomic.Bool // taken out by the suite (a kasd it is about to kill)
}

const (
	lbPeriod  = 200 * time.Millisecond
	lbTimeout = 500 * time.Millisecond
)

func newBalancer(f *fleet) *balancer {
	b := &balancer{f: f, ready: make([]atomic.Bool, len(f.kasd)), excluded: make([]atomic.Bool, len(f.kasd))}
	for i := range b.ready {
		b.ready[i].Store(true)
	}
	return b
}

// run polls every kasd's /readyz until ctx ends.
func (b *balancer) run(ctx context.Context) {
	c := &http.Client{Transport: &http.Transport{DialContext: b.f.client.Dial, DisableKeepAlives: true}, Timeout: lbTimeout}
	t := time.NewTicker(lbPeriod)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for i, k := range b.f.kasd {
			wg.Go(func() {
				ok := false
				if resp, err := c.Get(k.obsURL("/readyz")); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = resp.StatusCode == http.StatusOK
				}
				b.ready[i].Store(ok)
			})
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pick returns a kasd in rotation not in avoid (a bit mask), at random; when none is in
// rotation (every /readyz probe timed out on a saturated machine), any kasd not in avoid that
// the suite has not taken out; then any kasd not in avoid. A kasd the suite took out is never
// chosen while another may be: a load balancer that has removed a backend does not send it
// requests because health checks of the others are late, and a request sent to a kasd after
// its kill is not one the kill may fail.
func (b *balancer) pick(rng *rand.Rand, avoid uint) int {
	var in, kept, any [8]int
	nin, nkept, nany := 0, 0, 0
	for i := range b.ready {
		if avoid&(1<<i) != 0 {
			continue
		}
		any[nany] = i
		nany++
		if b.excluded[i].Load() {
			continue
		}
		kept[nkept] = i
		nkept++
		if b.ready[i].Load() {
			in[nin] = i
			nin++
		}
	}
	switch {
	case nin > 0:
		return in[rng.IntN(nin)]
	case nkept > 0:
		return kept[rng.IntN(nkept)]
	case nany > 0:
		return any[rng.IntN(nany)]
	}
	return rng.IntN(len(b.ready))
}

// sample is one request of the load.
type sample struct {
	start, end time.Duration // since the run's origin
	agent      int32
	kasd       int8
	post       bool
	outcome    string // "" when it succeeded
	worker     int32  // with seq, names the request's X-Request-Id (loadRun.requestID)
	seq        int32
}

func (s sample) latency() time.Duration { return s.end - s.start }

// loadRun is the load of one scenario: Concurrency workers until stop.
type loadRun struct {
	s         *suite
	origin    time.Time
	stopping  atomic.Bool
	wg        sync.WaitGroup
	per       [][]sample
	lbRetries atomic.Int64 // connections refused by a kasd, request sent to another

	mu    sync.Mutex // guards marks
	marks map[string]time.Duration

	samples []sample // all of them, by start; set by stop
}

func (s *suite) startLoad() *loadRun {
	r := &loadRun{s: s, origin: time.Now(), per: make([][]sample, s.cfg.Concurrency), marks: map[string]time.Duration{}}
	for w := range s.cfg.Concurrency {
		r.wg.Go(func() { r.worker(w) })
	}
	return r
}

// mark records that something happened now and returns when, since the origin.
func (r *loadRun) mark(what string) time.Duration {
	t := time.Since(r.origin)
	r.mu.Lock()
	r.marks[what] = t
	r.mu.Unlock()
	return t
}

// stop lets every worker finish its request and returns when they are gone.
func (r *loadRun) stop() {
	r.stopping.Store(true)
	r.wg.Wait()
	for _, p := range r.per {
		r.samples = append(r.samples, p...)
	}
	slices.SortFunc(r.samples, func(a, b sample) int { return int(a.start - b.start) })
}

func (r *loadRun) worker(w int) {
	rng := rand.New(rand.NewPCG(uint64(r.origin.UnixNano()), uint64(w)))
	var out []sample
	for seq := int32(0); !r.stopping.Load(); seq++ {
		a := rng.IntN(len(r.s.f.agents))
		post := rng.IntN(2) == 0
		n := bodySize(rng)
		seed := rng.Uint64()
		start := time.Since(r.origin)
		id := r.requestID(int32(w), seq)
		k, outcome := r.one(rng, a, post, n, seed, id)
		out = append(out, sample{start: start, end: time.Since(r.origin), agent: int32(a), kasd: int8(k), post: post, outcome: outcome, worker: int32(w), seq: seq})
		if r.s.cfg.Pause > 0 {
			time.Sleep(time.Duration(rng.Int64N(int64(2 * r.s.cfg.Pause))))
		}
	}
	r.per[w] = out
}

// bodySize: mostly small bodies, and 5% beyond the 64 KiB that kasd keeps to replay a refused
// request.
func bodySize(rng *rand.Rand) int {
	if rng.IntN(100) < 5 {
		return 64<<10 + rng.IntN(128<<10)
	}
	return rng.IntN(8 << 10)
}

// one sends one request through the balancer, to another kasd when a kasd refuses the
// connection, and returns the kasd that answered and the outcome.
func (r *loadRun) one(rng *rand.Rand, a int, post bool, n int, seed uint64, id string) (int, string) {
	var avoid uint
	for attempt := 0; ; attempt++ {
		k := r.s.lb.pick(rng, avoid)
		outcome, dialFailed := r.do(k, a, post, n, seed, id)
		if !dialFailed || attempt == 2 {
			return k, outcome
		}
		r.lbRetries.Add(1)
		avoid |= 1 << k
	}
}

// requestID is the X-Request-Id of worker w's request number seq in this run: kasd logs it at
// every hop (origin, holder, agentd), so the suite can tell from the logs where a failed
// request's bytes had gone.
func (r *loadRun) requestID(w, seq int32) string {
	return fmt.Sprintf("qkch-%x-%d-%d", r.origin.UnixNano()&0xffffffffff, w, seq)
}

func (s sample) id(r *loadRun) string { return r.requestID(s.worker, s.seq) }

func (r *loadRun) do(k, a int, post bool, n int, seed uint64, id string) (outcome string, dialFailed bool) {
	f := r.s.f
	agent := f.agents[a].id
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var req *http.Request
	var want []byte
	if post {
		want = pattern(seed, n)
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, f.kasd[k].apiURL("/api/v1/agents/"+agent+"/proxy/echo/echo"), bytes.NewReader(want))
		req.Header.Set("Content-Type", "application/octet-stream")
	} else {
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, f.kasd[k].apiURL(fmt.Sprintf("/api/v1/agents/%s/proxy/echo/data?n=%d&seed=%d", agent, n, seed)), nil)
	}
	req.Header.Set("Authorization", "Bearer "+f.jwt)
	req.Header.Set("X-Request-Id", id)
	resp, err := r.s.client.Do(req)
	if err != nil {
		var de *dialError
		if errors.As(err, &de) {
			return "transport: " + errorKind(err), true
		}
		return "transport: " + errorKind(err), false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		code := resp.Header.Get("Qkas-Error")
		if code == "" {
			code = "-"
		}
		return fmt.Sprintf("%d %s", resp.StatusCode, code), false
	}
	got, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1024))
	if err != nil {
		return "body: " + errorKind(err), false
	}
	if !post {
		want = pattern(seed, n)
	}
	head := agent + "\n"
	switch {
	case len(got) < len(head) || string(got[:len(head)]) != head:
		return "body: wrong agent", false
	case !bytes.Equal(got[len(head):], want):
		return "body: mismatch", false
	}
	return "", false
}

// errorKind classifies a transport error into a short, stable string.
func errorKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected EOF"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// --- analysis ---

// inflight counts the samples matching keep that were in flight at t.
func (r *loadRun) inflight(t time.Duration, keep func(sample) bool) int {
	n := 0
	for _, s := range r.samples {
		if s.start <= t && s.end > t && keep(s) {
			n++
		}
	}
	return n
}

// count returns how many samples match keep.
func (r *loadRun) count(keep func(sample) bool) int {
	n := 0
	for _, s := range r.samples {
		if keep(s) {
			n++
		}
	}
	return n
}

func failed(s sample) bool { return s.outcome != "" }

// describe names up to n of the samples matching keep (request id, kasd API, agent, when,
// outcome), for finding them in the logs.
func (r *loadRun) describe(keep func(sample) bool, n int) string {
	var out []string
	for _, x := range r.samples {
		if !keep(x) {
			continue
		}
		if len(out) == n {
			out = append(out, "…")
			break
		}
		out = append(out, fmt.Sprintf("%s (via %s to %s, %.2fs–%.2fs: %s)", x.id(r), r.s.f.kasd[x.kasd].id,
			r.s.f.agents[x.agent].id, x.start.Seconds(), x.end.Seconds(), x.outcome))
	}
	return strings.Join(out, "; ")
}
