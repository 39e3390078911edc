package kasd

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Admission of agent connections (docs/scale.md).
//
// After a kasd restart every agent reconnects at once. Each new connection holds an admission
// slot from its acceptance until its token has been checked (control stream, Hello, the
// authenticator: a tokens-file lookup or a GitLab round trip); Config.MaxPendingHandshakes
// slots exist. A connection that finds none is refused at once with overloaded and a
// RetryAfter hint in its close reason (api.CloseReason), and agentd waits at least that long,
// plus full jitter over as much again, before it dials again.
//
// The hints form a schedule: each refusal is given the next free place on a timeline that
// advances by the time one admission takes at the rate kasd has been admitting (connections
// whose token check finished, per second, over the last full second; at least one per slot per
// second), so refused agents come back spread at about the rate kasd admits them instead of all
// at once: most get in at their second attempt.

// Bounds of the RetryAfter hint given to refused agents.
const (
	minAdmissionRetry = 500 * time.Millisecond
	maxAdmissionRetry = 2 * time.Minute
)

// admission bounds concurrent agent handshakes and schedules refused agents' retries.
type admission struct {
	slots chan struct{}
	now   func() time.Time

	inProgress atomic.Int64

	mu       sync.Mutex // guards the fields below
	second   time.Time  // start of the current one-second bucket
	done     int        // admissions finished in the current bucket
	lastDone int        // admissions finished in the previous bucket
	horizon  time.Time  // the latest retry time handed out
}

func newAdmission(limit int, reg prometheus.Registerer) *admission {
	a := &admission{slots: make(chan struct{}, limit), now: time.Now}
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasd_admission_handshakes",
			Help: "Agent connections accepted whose token has not been checked yet (each holds an admission slot; at most --max-pending-handshakes).",
		}, func() float64 { return float64(a.inProgress.Load()) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasd_admission_retry_horizon_seconds",
			Help: "How far ahead the latest retry time given to a refused agent is: the backlog of refused agents, in seconds of admission.",
		}, func() float64 { return a.backlog().Seconds() }))
	}
	return a
}

// tryAcquire takes a slot if one is free. release gives it back; admitted says whether the
// connection got through (its token was checked), which counts towards the admission rate.
// Calls after the first do nothing.
func (a *admission) tryAcquire() (release func(admitted bool), ok bool) {
	select {
	case a.slots <- struct{}{}:
	default:
		return nil, false
	}
	a.inProgress.Add(1)
	var once sync.Once
	return func(admitted bool) {
		once.Do(func() {
			<-a.slots
			a.inProgress.Add(-1)
			if admitted {
				a.mu.Lock()
				a.rollLocked(a.now())
				a.done++
				a.mu.Unlock()
			}
		})
	}, true
}

// rollLocked moves the one-second buckets forward to now.
func (a *admission) rollLocked(now time.Time) {
	switch d := now.Sub(a.second); {
	case d < time.Second:
	case d < 2*time.Second:
		a.second, a.lastDone, a.done = a.second.Add(time.Second), a.done, 0
	default:
		a.second, a.lastDone, a.done = now, 0, 0
	}
}

// retryAfter books the next place on the retry timeline for a refused agent and returns how
// long from now it is, within [minAdmissionRetry, maxAdmissionRetry].
func (a *admission) retryAfter() time.Duration {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rollLocked(now)
	rate := max(a.lastDone, cap(a.slots)) // admissions per second
	step := time.Second / time.Duration(rate)
	a.horizon = later(a.horizon, now.Add(minAdmissionRetry)).Add(step)
	if max := now.Add(maxAdmissionRetry); a.horizon.After(max) {
		a.horizon = max
	}
	return a.horizon.Sub(now)
}

// backlog is how far ahead of now the retry timeline reaches.
func (a *admission) backlog() time.Duration {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	return max(a.horizon.Sub(now), 0)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
