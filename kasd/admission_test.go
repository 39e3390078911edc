package kasd

import (
	"testing"
	"time"
)

func TestAdmissionLimit(t *testing.T) {
	a := newAdmission(3, nil)
	var releases []func(bool)
	for i := range 3 {
		r, ok := a.tryAcquire()
		if !ok {
			t.Fatalf("slot %d refused", i)
		}
		releases = append(releases, r)
	}
	if _, ok := a.tryAcquire(); ok {
		t.Fatal("a fourth handshake was admitted with 3 slots")
	}
	if n := a.inProgress.Load(); n != 3 {
		t.Fatalf("in progress = %d", n)
	}
	releases[0](true)
	releases[0](true) // a second release gives nothing back
	if n := a.inProgress.Load(); n != 2 {
		t.Fatalf("in progress after one release = %d", n)
	}
	r, ok := a.tryAcquire()
	if !ok {
		t.Fatal("a freed slot was not reused")
	}
	if _, ok := a.tryAcquire(); ok {
		t.Fatal("a double release freed two slots")
	}
	r(false)
	releases[1](false)
	releases[2](false)
	if n := a.inProgress.Load(); n != 0 || len(a.slots) != 0 {
		t.Fatalf("in progress %d, slots held %d after every release", n, len(a.slots))
	}
}

// TestAdmissionRetrySchedule: refused agents get retry times spread at the rate kasd admits,
// never sooner than minAdmissionRetry and never later than maxAdmissionRetry.
func TestAdmissionRetrySchedule(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(100, nil)
	a.now = func() time.Time { return now }

	// Nothing admitted yet: assume one admission per slot per second, 10ms apart.
	var prev time.Duration
	for i := range 50 {
		d := a.retryAfter()
		if want := minAdmissionRetry + time.Duration(i+1)*10*time.Millisecond; d != want {
			t.Fatalf("refusal %d: retry after %v, want %v", i, d, want)
		}
		if d <= prev {
			t.Fatalf("refusal %d: %v not after %v", i, d, prev)
		}
		prev = d
	}
	if b := a.backlog(); b != prev {
		t.Fatalf("backlog %v, want %v", b, prev)
	}

	// kasd admitted 1000 agents in the last second: refusals are 1ms apart.
	now = now.Add(2 * time.Second) // the earlier schedule is in the past
	for range 1000 {
		r, _ := a.tryAcquire()
		r(true)
	}
	r, _ := a.tryAcquire()
	r(false) // a refused token does not count as an admission
	now = now.Add(time.Second)
	d1, d2 := a.retryAfter(), a.retryAfter()
	if d1 != minAdmissionRetry+time.Millisecond || d2-d1 != time.Millisecond {
		t.Fatalf("at 1000 admissions/s: %v then %v, want %v then 1ms later", d1, d2, minAdmissionRetry+time.Millisecond)
	}

	// A backlog beyond the cap is clamped.
	for range 130_000 { // 130 s of admissions at 1000/s
		a.retryAfter()
	}
	if d := a.retryAfter(); d != maxAdmissionRetry {
		t.Fatalf("retry after %v, want the cap %v", d, maxAdmissionRetry)
	}
}
