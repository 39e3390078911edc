package kasd

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/qkas/qkas/api"
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

	// Nothing admitted yet: assume initialAdmissionRate (50 a second), 20ms apart.
	var prev time.Duration
	for i := range 50 {
		d := a.retryAfter()
		if want := minAdmissionRetry + time.Duration(i+1)*20*time.Millisecond; d != want {
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

	// kasd admitted only 10 agents in the last second (a storm on a CPU-short host): refusals
	// are 100ms apart, not the 10ms one admission per slot per second would say.
	now = now.Add(3 * time.Minute) // the earlier schedule is in the past
	for range 10 {
		r, _ := a.tryAcquire()
		r(true)
	}
	now = now.Add(time.Second)
	d1, d2 = a.retryAfter(), a.retryAfter()
	if d1 != minAdmissionRetry+100*time.Millisecond || d2-d1 != 100*time.Millisecond {
		t.Fatalf("at 10 admissions/s: %v then %v, want %v then 100ms later", d1, d2, minAdmissionRetry+100*time.Millisecond)
	}

	// A backlog beyond the cap is clamped.
	for range 1300 { // 130 s of admissions at 10/s
		a.retryAfter()
	}
	if d := a.retryAfter(); d != maxAdmissionRetry {
		t.Fatalf("retry after %v, want the cap %v", d, maxAdmissionRetry)
	}
}

// TestAdmissionTLSGateAndRefusalDedup: the gate before TLS admits up to its limit and takes
// back what ends; the refusals of one address within refusalDedup count once and share one
// retry time, another address's and a later one's count again and book later places on the
// retry timeline, and old addresses are forgotten.
func TestAdmissionTLSGateAndRefusalDedup(t *testing.T) {
	a := newAdmission(2, nil)
	now := time.Unix(1000, 0)
	a.now = func() time.Time { return now }
	end1, ok1 := a.beginTLS()
	_, ok2 := a.beginTLS()
	if _, ok3 := a.beginTLS(); !ok1 || !ok2 || ok3 {
		t.Fatalf("gate of 2 admitted %v %v %v", ok1, ok2, ok3)
	}
	end1()
	if _, ok := a.beginTLS(); !ok {
		t.Fatal("an ended handshake's place was not given back")
	}
	if n := a.tls.Load(); n != 2 {
		t.Fatalf("%d handshakes in progress, want 2", n)
	}

	x := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 4000}
	y := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 4001}
	var booked time.Time
	bookedFor := map[int]time.Time{}
	for i, c := range []struct {
		addr  *net.UDPAddr
		after time.Duration
		first bool
	}{
		{x, 0, true},
		{x, 0, false},                      // the second packet of the same first flight
		{y, 0, true},                       // another agent
		{x, 600 * time.Millisecond, false}, // a retransmission
		{x, refusalDedup, true},            // a new dial, a second after the first
	} {
		now = now.Add(c.after)
		retry, got := a.refuseTLS(c.addr)
		if got != c.first {
			t.Errorf("refusal %d (%v): counted %v, want %v", i, c.addr, got, c.first)
		}
		// A dial's first refusal books a place on the timeline, at least refusalDedup ahead
		// (agentd comes back only after it, so its next dial is not taken for a
		// retransmission); the same dial's other packets get the time already booked.
		at := now.Add(retry)
		if c.first {
			if retry < refusalDedup {
				t.Errorf("refusal %d (%v): retry in %v, want at least %v", i, c.addr, retry, refusalDedup)
			}
			if !at.After(booked) {
				t.Errorf("refusal %d (%v): retry at %v, not after the last booked %v", i, c.addr, at, booked)
			}
			booked, bookedFor[c.addr.Port] = at, at
		} else if want := bookedFor[c.addr.Port]; !at.Equal(want) {
			t.Errorf("refusal %d (%v), a duplicate: retry at %v, want the booked %v", i, c.addr, at, want)
		}
	}
	now = now.Add(3 * refusalDedup)
	a.refuseTLS(y)
	if n := len(a.refused); n != 1 {
		t.Errorf("%d addresses remembered after the others aged out, want 1", n)
	}
}

// TestTLSGateHoldsRefusalUntilRetry: an address refused by the gate before TLS is refused again
// until its retry time, even with a place free: what it sends meanwhile is the rest of the
// refused dial's first flight (the second Initial packet of a post-quantum ClientHello) or a
// retransmission of it, and admitted it would start a handshake whose client has gone. Another
// address takes the free place, and the refused one is admitted once its retry time has come.
func TestTLSGateHoldsRefusalUntilRetry(t *testing.T) {
	s := &Server{admit: newAdmission(1, nil)}
	s.m = newMetrics(prometheus.NewRegistry(), s)
	now := time.Unix(1000, 0)
	s.admit.now = func() time.Time { return now }
	x := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 4000}
	y := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 4000}
	z := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 3), Port: 4000}

	end, _, ok := s.agentHandshakeGate(y) // the only place
	if !ok {
		t.Fatal("the first handshake was refused")
	}
	_, reason, ok := s.agentHandshakeGate(x) // x's first Initial: refused
	if ok {
		t.Fatal("a handshake beyond the limit was admitted")
	}
	retry := retryOf(t, reason)
	if retry < refusalDedup {
		t.Fatalf("retry after %v (%q), want at least %v", retry, reason, refusalDedup)
	}
	end() // a place is free

	now = now.Add(time.Millisecond) // x's second Initial packet
	if _, again, ok := s.agentHandshakeGate(x); ok {
		t.Fatal("the second packet of a refused first flight took the free place")
	} else if got := retryOf(t, again); got > retry || got < retry-time.Millisecond {
		t.Errorf("the second packet was told %v, want the booked %v", got, retry)
	}
	now = now.Add(refusalDedup / 2) // a retransmission, before the retry time
	if _, _, ok := s.agentHandshakeGate(x); ok {
		t.Fatal("a retransmission before the retry time took the free place")
	}
	// A later retransmission, past refusalDedup but before the retry time: refused with the
	// same retry time, not a later one (the client was told the first and hears no other).
	if retry <= refusalDedup*3/2+time.Millisecond {
		t.Fatalf("retry %v leaves no room for a late retransmission", retry)
	}
	now = now.Add(refusalDedup)
	if _, late, ok := s.agentHandshakeGate(x); ok {
		t.Fatal("a late retransmission before the retry time took the free place")
	} else if got, want := retryOf(t, late), retry-refusalDedup*3/2-time.Millisecond; got > want+time.Millisecond || got < want-time.Millisecond {
		t.Errorf("a late retransmission was told %v, want the first refusal's time (%v from now)", got, want)
	}
	end, _, ok = s.agentHandshakeGate(z)
	if !ok {
		t.Fatal("another agent did not get the free place")
	}
	end()
	now = now.Add(retry) // past x's retry time (a second ahead at least): its new dial is admitted
	if _, _, ok := s.agentHandshakeGate(x); !ok {
		t.Fatal("the refused agent's dial after its retry time was refused")
	}
	if n := overloadedCount(t, s.m); n != 1 {
		t.Errorf("%v refusals counted, want 1 (one dial)", n)
	}
}

func retryOf(t *testing.T, reason string) time.Duration {
	t.Helper()
	e, ok := api.ParseCloseReason(reason)
	if !ok {
		t.Fatalf("close reason %q does not parse", reason)
	}
	return e.RetryAfter
}

// overloadedCount is kasd_agent_connections_total{result="overloaded"}.
func overloadedCount(t *testing.T, m *metrics) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.agentConnections.WithLabelValues("overloaded").Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// A second in which the storm's pile of handshakes let few through does not stretch the
// schedule: it runs at the best second of the last rateWindow, and forgets a second older than
// that.
func TestAdmissionRateIsTheBestRecentSecond(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(1000, nil)
	a.now = func() time.Time { return now }
	admit := func(n int) {
		for range n {
			r, _ := a.tryAcquire()
			r(true)
		}
	}
	step := func() time.Duration { // the distance between two places booked now
		a.retryAfter()
		b1 := a.backlog()
		a.retryAfter()
		return a.backlog() - b1
	}
	admit(200) // second 0: 200 admissions
	now = now.Add(time.Second)
	admit(10) // second 1: the pile-up, 10
	now = now.Add(time.Second)
	if s := step(); s != 5*time.Millisecond {
		t.Fatalf("after seconds of 200 and 10 admissions: places %v apart, want 5ms (200/s)", s)
	}
	now = now.Add(rateWindow * time.Second) // the busy second ages out; nothing since
	admit(10)
	now = now.Add(time.Second)
	if s := step(); s != 100*time.Millisecond {
		t.Fatalf("%v after the busy second, with 10 admissions in the last: places %v apart, want 100ms", rateWindow*time.Second, s)
	}
}
