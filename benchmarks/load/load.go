package load

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options says how much load to generate.
type Options struct {
	// Concurrency is the number of workers, each with one request in flight. Default 1.
	Concurrency int
	// Requests is the total number of requests. Zero: run for Duration.
	Requests int
	// Duration bounds the run when Requests is zero. One of the two is required.
	Duration time.Duration
	// Pause is slept by each worker between its requests (a steady paced stream). Default 0.
	Pause time.Duration
}

// Func issues one request. A non-nil error counts the request as failed; its Error() string is
// the failure's kind in Result.Errors, so return short, classified errors (see ErrorKind).
type Func func(ctx context.Context) error

// Sample is one request.
type Sample struct {
	Start   time.Duration // since the run began
	Latency time.Duration
	Err     string // "" if the request succeeded
}

// Result holds every sample of a run.
type Result struct {
	Samples []Sample      // in completion order per worker, workers concatenated
	Elapsed time.Duration // wall time of the run
	sorted  []time.Duration
}

// Run issues requests with fn according to o until done, ctx ends, or the duration elapses.
// Requests cut short by the end of the duration are not counted.
func Run(ctx context.Context, o Options, fn Func) (*Result, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Requests <= 0 && o.Duration <= 0 {
		return nil, errors.New("load: Requests or Duration is required")
	}
	runCtx := ctx
	if o.Requests <= 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var next atomic.Int64 // requests handed out
	per := make([][]Sample, o.Concurrency)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		wg.Go(func() {
			var out []Sample
			if o.Requests > 0 {
				out = make([]Sample, 0, o.Requests/o.Concurrency+1)
			}
			for runCtx.Err() == nil {
				if o.Requests > 0 && next.Add(1) > int64(o.Requests) {
					break
				}
				t0 := time.Now()
				err := fn(runCtx)
				lat := time.Since(t0)
				if err != nil && runCtx.Err() != nil {
					break // cut short by the end of the run, not a failure
				}
				s := Sample{Start: t0.Sub(start), Latency: lat}
				if err != nil {
					s.Err = err.Error()
				}
				out = append(out, s)
				if o.Pause > 0 {
					select {
					case <-runCtx.Done():
					case <-time.After(o.Pause):
					}
				}
			}
			per[w] = out
		})
	}
	wg.Wait()
	r := &Result{Elapsed: time.Since(start)}
	for _, s := range per {
		r.Samples = append(r.Samples, s...)
	}
	if err := ctx.Err(); err != nil {
		return r, err
	}
	return r, nil
}

// Merge concatenates results of the same scenario run in several rounds (alternating with a
// baseline). Elapsed is the sum, so Rate stays requests per second of load time.
func Merge(rs ...*Result) *Result {
	m := &Result{}
	for _, r := range rs {
		if r == nil {
			continue
		}
		m.Samples = append(m.Samples, r.Samples...)
		m.Elapsed += r.Elapsed
	}
	return m
}

// OK is the number of successful requests; Failed the number of failed ones.
func (r *Result) OK() int { return len(r.Samples) - r.Failed() }

func (r *Result) Failed() int {
	n := 0
	for _, s := range r.Samples {
		if s.Err != "" {
			n++
		}
	}
	return n
}

// Errors counts failed requests by kind.
func (r *Result) Errors() map[string]int {
	m := map[string]int{}
	for _, s := range r.Samples {
		if s.Err != "" {
			m[s.Err]++
		}
	}
	return m
}

// Rate is successful requests per second of wall time.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK()) / r.Elapsed.Seconds()
}

// Latencies returns the successful requests' latencies, sorted ascending. The caller must not
// modify the slice.
func (r *Result) Latencies() []time.Duration {
	if r.sorted == nil {
		r.sorted = make([]time.Duration, 0, len(r.Samples))
		for _, s := range r.Samples {
			if s.Err == "" {
				r.sorted = append(r.sorted, s.Latency)
			}
		}
		slices.Sort(r.sorted)
	}
	return r.sorted
}

// Quantile returns the q-quantile (0..1) of successful latencies by the nearest-rank method,
// exact over all samples; 0 if there are none.
func (r *Result) Quantile(q float64) time.Duration {
	l := r.Latencies()
	if len(l) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(l)))) - 1
	return l[min(max(i, 0), len(l)-1)]
}

// Summary is the usual digest of a Result, in microseconds, ready for JSON.
type Summary struct {
	Requests int            `json:"requests"`
	Failed   int            `json:"failed"`
	Errors   map[string]int `json:"errors,omitempty"`
	P50us    float64        `json:"p50_us"`
	P90us    float64        `json:"p90_us"`
	P99us    float64        `json:"p99_us"`
	P999us   float64        `json:"p999_us"`
	MaxUs    float64        `json:"max_us"`
	RPS      float64        `json:"rps"`
}

// Summarize digests r.
func (r *Result) Summarize() Summary {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	s := Summary{
		Requests: len(r.Samples), Failed: r.Failed(),
		P50us: us(r.Quantile(0.5)), P90us: us(r.Quantile(0.9)), P99us: us(r.Quantile(0.99)),
		P999us: us(r.Quantile(0.999)), MaxUs: us(r.Quantile(1)), RPS: r.Rate(),
	}
	if s.Failed > 0 {
		s.Errors = r.Errors()
	}
	return s
}

func (s Summary) String() string {
	return fmt.Sprintf("n=%d failed=%d p50=%.0fµs p90=%.0fµs p99=%.0fµs p99.9=%.0fµs %.0f req/s",
		s.Requests, s.Failed, s.P50us, s.P90us, s.P99us, s.P999us, s.RPS)
}
