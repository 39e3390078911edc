package webui

import (
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/qkas/qkas/kasd"
)

// Feed is the JSON the page polls at FeedPath.
type Feed struct {
	// PollMillis is how often the page should poll, in milliseconds.
	PollMillis int64 `json:"poll_ms"`
	// Status is the snapshot of this kasd and the fleet, scoped to the caller's JWT.
	Status *kasd.Status `json:"status"`
	// Rates are request and error rates over the last RateWindow.
	Rates Rates `json:"rates"`
}

// Rates are per-second rates from two samples of the cumulative counters in kasd.Status.
type Rates struct {
	// WindowSecs is the time between the two samples; 0 while there is only one sample (the
	// first poll after kasd started or after a pause of every viewer), and then every rate is
	// zero.
	WindowSecs float64 `json:"window_s"`
	// Routes has one entry per route of kasd.Status.Routes, in the same order.
	Routes []RouteRate `json:"routes"`
	// APIErrorsPerSec is kasd_api_errors_total's rate by error code (agent_not_connected,
	// deadline_exceeded, ...); codes that did not change are left out.
	APIErrorsPerSec map[string]float64 `json:"api_errors_per_s"`
}

// RouteRate is one route's rates.
type RouteRate struct {
	Route          string  `json:"route"`
	RequestsPerSec float64 `json:"requests_per_s"`
	// ErrorsPerSec counts answers with a status of 400 or more (499: the client went away).
	ErrorsPerSec float64 `json:"errors_per_s"`
	// ErrorRatio is ErrorsPerSec / RequestsPerSec, 0 without requests.
	ErrorRatio float64 `json:"error_ratio"`
	// ByCodePerSec is the rate by HTTP status; statuses that did not change are left out.
	ByCodePerSec map[string]float64 `json:"by_code_per_s"`
}

// sample is the cumulative counters of one Status.
type sample struct {
	at        time.Time
	routes    map[string]map[string]uint64 // route -> HTTP status -> requests
	apiErrors map[string]uint64
}

func sampleOf(st *kasd.Status) sample {
	s := sample{at: st.Time, routes: make(map[string]map[string]uint64, len(st.Routes)), apiErrors: maps.Clone(st.APIErrors)}
	for _, r := range st.Routes {
		s.routes[r.Route] = maps.Clone(r.Requests)
	}
	return s
}

// sampler keeps recent samples, shared by every viewer of the page: rates do not depend on how
// many viewers poll, nor how often.
type sampler struct {
	window, gap time.Duration

	mu      sync.Mutex // guards the field below
	samples []sample   // oldest first; at most window/gap+1, none older than window
}

func newSampler(window, gap time.Duration) *sampler {
	return &sampler{window: window, gap: gap}
}

// rates returns the rates between the oldest kept sample and st, and keeps st as a sample when
// the newest one is at least gap older.
func (s *sampler) rates(st *kasd.Status) Rates {
	cur := sampleOf(st)
	s.mu.Lock()
	defer s.mu.Unlock()
	drop := 0
	for drop < len(s.samples) && cur.at.Sub(s.samples[drop].at) > s.window {
		drop++
	}
	s.samples = s.samples[drop:]
	var out Rates
	if len(s.samples) > 0 {
		out = diff(s.samples[0], cur, st.Routes)
	} else {
		out = diff(cur, cur, st.Routes)
	}
	if n := len(s.samples); n == 0 || cur.at.Sub(s.samples[n-1].at) >= s.gap {
		s.samples = append(s.samples, cur)
	}
	return out
}

// diff returns the rates from a to b; routes gives the order. Counters never decrease within a
// kasd process; a decrease (a sample from another clock) counts as no change.
func diff(a, b sample, routes []kasd.RouteStatus) Rates {
	out := Rates{Routes: make([]RouteRate, 0, len(routes)), APIErrorsPerSec: map[string]float64{}}
	dt := b.at.Sub(a.at).Seconds()
	if dt > 0 {
		out.WindowSecs = dt
	}
	per := func(from, to uint64) float64 {
		if dt <= 0 || to <= from {
			return 0
		}
		return float64(to-from) / dt
	}
	for _, r := range routes {
		rr := RouteRate{Route: r.Route, ByCodePerSec: map[string]float64{}}
		before := a.routes[r.Route]
		for code, n := range b.routes[r.Route] {
			v := per(before[code], n)
			if v == 0 {
				continue
			}
			rr.ByCodePerSec[code] = v
			rr.RequestsPerSec += v
			if status, err := strconv.Atoi(code); err == nil && status >= 400 {
				rr.ErrorsPerSec += v
			}
		}
		if rr.RequestsPerSec > 0 {
			rr.ErrorRatio = rr.ErrorsPerSec / rr.RequestsPerSec
		}
		out.Routes = append(out.Routes, rr)
	}
	for code, n := range b.apiErrors {
		if v := per(a.apiErrors[code], n); v > 0 {
			out.APIErrorsPerSec[code] = v
		}
	}
	return out
}
