package runner

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuSplit is the scale scenario's division of the machine's CPUs (Sizes.ScaleKasdCPUs): kasd
// alone on kasd, everything else — the fleet, the routing agentd and its service, the runner
// measuring latency — on rest. In production the agents run on other machines; on a small
// machine the fleet's side of 50,000 handshakes and keep-alives beside kasd starves both, and
// what is measured is the machine, not kasd. Both are taskset(1) CPU lists.
type cpuSplit struct {
	kasd, rest       string
	kasdSet, restSet unix.CPUSet
}

// splitCPUs parses list (taskset's syntax: "0", "0-1,3") and divides the CPUs this process may
// run on into list and the others. Every CPU of list must be allowed, and at least one allowed
// CPU must be left for the rest.
func splitCPUs(list string) (cpuSplit, error) {
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return cpuSplit{}, fmt.Errorf("sched_getaffinity: %w", err)
	}
	return splitCPUsOf(list, allowed)
}

func splitCPUsOf(list string, allowed unix.CPUSet) (s cpuSplit, err error) {
	cpus, err := parseCPUList(list)
	if err != nil {
		return s, err
	}
	for _, c := range cpus {
		if !allowed.IsSet(c) {
			return s, fmt.Errorf("kasd's CPUs %q: CPU %d is not one this process may use (%s)", list, c, formatCPUs(allowed))
		}
		s.kasdSet.Set(c)
	}
	s.restSet = allowed
	for _, c := range cpus {
		s.restSet.Clear(c)
	}
	if s.restSet.Count() == 0 {
		return s, fmt.Errorf("kasd's CPUs %q leave none of %s for the fleet", list, formatCPUs(allowed))
	}
	s.kasd, s.rest = formatCPUs(s.kasdSet), formatCPUs(s.restSet)
	return s, nil
}

// maxCPU bounds a CPU number in a list (unix.CPUSet holds 1,024).
const maxCPU = 1023

// parseCPUList parses a taskset CPU list: comma-separated numbers and inclusive ranges.
func parseCPUList(list string) ([]int, error) {
	bad := func(why string) error { return fmt.Errorf("CPU list %q: %s", list, why) }
	if strings.TrimSpace(list) == "" {
		return nil, bad("empty")
	}
	var out []int
	for _, f := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 || a > maxCPU {
			return nil, bad(fmt.Sprintf("bad CPU %q", lo))
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b > maxCPU {
				return nil, bad(fmt.Sprintf("bad range %q", f))
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out, nil
}

// formatCPUs is set as a taskset CPU list of ranges.
func formatCPUs(set unix.CPUSet) string {
	var parts []string
	for c := 0; c <= maxCPU; c++ {
		if !set.IsSet(c) {
			continue
		}
		end := c
		for end+1 <= maxCPU && set.IsSet(end+1) {
			end++
		}
		if end == c {
			parts = append(parts, strconv.Itoa(c))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c, end))
		}
		c = end
	}
	return strings.Join(parts, ",")
}

// pinned is argv run by taskset on cpus; argv itself when cpus is empty.
func pinned(cpus string, argv []string) []string {
	if cpus == "" {
		return argv
	}
	return append([]string{"taskset", "-c", cpus}, argv...)
}

// pinSelf moves every thread of this process to set (threads made later inherit it from the
// thread that makes them) and returns what moves every thread back to the CPUs the calling
// thread had.
func pinSelf(set unix.CPUSet) (restore func(), err error) {
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		return func() {}, fmt.Errorf("sched_getaffinity: %w", err)
	}
	restore = func() { _ = setAllThreads(orig) } // best effort: the run goes on either way
	if err := setAllThreads(set); err != nil {
		restore()
		return func() {}, err
	}
	return restore, nil
}

// setAllThreads sets the affinity of every thread of this process.
func setAllThreads(set unix.CPUSet) error {
	tids, err := listThreads()
	if err != nil {
		return err
	}
	for _, tid := range tids {
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH { // ESRCH: exited since the listing
			return fmt.Errorf("sched_setaffinity of thread %d: %w", tid, err)
		}
	}
	return nil
}

// listThreads is the thread ids of this process.
func listThreads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, ent := range ents {
		if tid, err := strconv.Atoi(ent.Name()); err == nil {
			out = append(out, tid)
		}
	}
	return out, nil
}
