package runner

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func cpuSetOf(cpus ...int) unix.CPUSet {
	var s unix.CPUSet
	for _, c := range cpus {
		s.Set(c)
	}
	return s
}

// TestSplitCPUs: kasd gets exactly the listed CPUs, the rest gets every other allowed one, and
// a list naming a CPU the process may not use, or leaving none for the fleet, is refused.
func TestSplitCPUs(t *testing.T) {
	allowed := cpuSetOf(0, 1, 2, 3, 5, 6, 7)
	for _, tc := range []struct {
		list, kasd, rest, err string
	}{
		{list: "0", kasd: "0", rest: "1-3,5-7"},
		{list: "1-2,6", kasd: "1-2,6", rest: "0,3,5,7"},
		{list: " 7 ", kasd: "7", rest: "0-3,5-6"},
		{list: "0-3,5-7", err: "leave none"},
		{list: "4", err: "CPU 4 is not one"},
		{list: "", err: "empty"},
		{list: "a", err: "bad CPU"},
		{list: "3-1", err: "bad range"},
		{list: "0-", err: "bad range"},
		{list: "-1", err: "bad CPU"},
		{list: "5000", err: "bad CPU"},
	} {
		s, err := splitCPUsOf(tc.list, allowed)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want one saying %q", tc.list, err, tc.err)
			}
			continue
		}
		if err != nil || s.kasd != tc.kasd || s.rest != tc.rest {
			t.Errorf("%q: kasd %q rest %q (%v), want %q and %q", tc.list, s.kasd, s.rest, err, tc.kasd, tc.rest)
		}
		if s.kasdSet.Count()+s.restSet.Count() != allowed.Count() {
			t.Errorf("%q: %d + %d CPUs, want the %d allowed", tc.list, s.kasdSet.Count(), s.restSet.Count(), allowed.Count())
		}
	}
	if got := pinned("1", []string{"x", "-y"}); strings.Join(got, " ") != "taskset -c 1 x -y" {
		t.Errorf("pinned: %v", got)
	}
	if got := pinned("", []string{"x"}); strings.Join(got, " ") != "x" {
		t.Errorf("pinned without CPUs: %v", got)
	}
}

// TestPinSelf: every thread of the process moves to the set, and restore puts every thread,
// those made while pinned included, back.
func TestPinSelf(t *testing.T) {
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Count() < 2 {
		t.Skip("one CPU: nothing to pin to")
	}
	var one unix.CPUSet
	for c := range maxCPU + 1 {
		if orig.IsSet(c) {
			one.Set(c)
			break
		}
	}
	restore, err := pinSelf(one)
	if err != nil {
		t.Fatal(err)
	}
	check := func(want unix.CPUSet, when string) {
		t.Helper()
		tids, err := listThreads()
		if err != nil {
			t.Fatal(err)
		}
		for _, tid := range tids {
			var got unix.CPUSet
			if unix.SchedGetaffinity(tid, &got) == nil && got != want {
				t.Errorf("%s: thread %d on CPUs %s, want %s", when, tid, formatCPUs(got), formatCPUs(want))
			}
		}
	}
	check(one, "pinned")
	done := make(chan struct{})
	go func() { // a goroutine that locks a new OS thread: made while pinned
		defer close(done)
		lockNewThread()
	}()
	<-done
	check(one, "pinned, after a new thread")
	restore()
	check(orig, "restored")
}

// lockNewThread makes the runtime start an OS thread: a goroutine locked to its thread that
// exits without unlocking takes the thread with it, so the next locked goroutine needs a new
// one.
func lockNewThread() {
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(ready)
		// exits locked: the runtime terminates this thread
	}()
	<-ready
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	time.Sleep(time.Millisecond)
}
