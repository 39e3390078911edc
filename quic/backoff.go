package quic

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff computes exponential reconnect delays with jitter, so that many agents cut off at
// once do not reconnect in lockstep. The zero value uses the defaults; it holds no state, the
// caller counts attempts.
//
// The exponential schedule is github.com/cenkalti/backoff/v5's ExponentialBackOff (the one
// backoff of the module; registry/ uses it directly). This type remains because agentd's
// reconnect policy needs what that one does not offer: a delay by attempt number, without
// state shared between a slot's retries, and a random source tests can inject
// (agentd/agent.go reconnectDelay applies full jitter over Delay's ceiling).
type Backoff struct {
	Initial    time.Duration // delay of attempt 0 before jitter; default 100ms
	Max        time.Duration // cap on every delay, jitter included; default 10s
	Multiplier float64       // growth per attempt; default 2; values below 1 are treated as 1
	// Jitter: the delay is multiplied by a random factor in [1-Jitter, 1+Jitter], then capped
	// at Max. Default 0.2 (0 means default); a negative value disables jitter; above 1 is 1.
	Jitter float64
	Rand   func() float64 // returns values in [0, 1); default math/rand/v2.Float64; for tests
}

// Default values for Backoff.
const (
	DefaultBackoffInitial    = 100 * time.Millisecond
	DefaultBackoffMax        = 10 * time.Second
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffJitter     = 0.2
)

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoffMax
	}
	switch {
	case b.Multiplier == 0:
		b.Multiplier = DefaultBackoffMultiplier
	case b.Multiplier < 1:
		b.Multiplier = 1
	}
	switch {
	case b.Jitter == 0:
		b.Jitter = DefaultBackoffJitter
	case b.Jitter < 0:
		b.Jitter = 0
	case b.Jitter > 1:
		b.Jitter = 1
	}
	if b.Rand == nil {
		b.Rand = rand.Float64
	}
	return b
}

// Delay is the delay before retry number attempt (0-based): about Initial*Multiplier^attempt
// with jitter, never more than Max. A negative attempt counts as 0.
func (b Backoff) Delay(attempt int) time.Duration {
	b = b.withDefaults()
	// The ceiling without jitter: the attempt-th interval of the exponential schedule, which
	// stops growing at Max (a few dozen steps at most, whatever attempt is).
	e := &backoff.ExponentialBackOff{InitialInterval: b.Initial, Multiplier: b.Multiplier, MaxInterval: b.Max}
	d := e.NextBackOff()
	for i := 0; i < attempt && d < b.Max; i++ {
		next := e.NextBackOff()
		if next == d { // Multiplier 1: constant
			break
		}
		d = next
	}
	f := math.Min(float64(d), float64(b.Max))
	if b.Jitter > 0 {
		f *= 1 + b.Jitter*(2*b.Rand()-1)
	}
	return time.Duration(math.Min(f, float64(b.Max)))
}

// Sleep waits Delay(attempt), or until ctx is done, in which case it returns ctx.Err().
func (b Backoff) Sleep(ctx context.Context, attempt int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(b.Delay(attempt))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
