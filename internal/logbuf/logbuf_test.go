package logbuf

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a destination that keeps each Write separately; gate, when set, holds writes.
type recorder struct {
	mu     sync.Mutex
	writes [][]byte
	at     []time.Time
	gate   chan struct{}
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, append([]byte(nil), p...))
	r.at = append(r.at, time.Now())
	return len(p), nil
}

func (r *recorder) snapshot() ([][]byte, []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.writes...), append([]time.Time(nil), r.at...)
}

func (r *recorder) all() string {
	ws, _ := r.snapshot()
	return string(bytes.Join(ws, nil))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A burst of lines reaches the destination as one write, an interval after its first line.
func TestBatchesWithinInterval(t *testing.T) {
	var r recorder
	w := New(&r, 50*time.Millisecond, 1<<20)
	defer w.Close()
	start := time.Now()
	var want strings.Builder
	for i := range 100 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	if ws, _ := r.snapshot(); len(ws) != 0 {
		t.Fatalf("%d writes before the interval ended", len(ws))
	}
	waitFor(t, "the batch", func() bool { ws, _ := r.snapshot(); return len(ws) > 0 })
	ws, at := r.snapshot()
	if len(ws) != 1 || string(ws[0]) != want.String() {
		t.Fatalf("%d writes, want the 100 lines in one", len(ws))
	}
	if d := at[0].Sub(start); d < 50*time.Millisecond {
		t.Fatalf("flushed %v after the first line, before the 50ms interval", d)
	}
}

// Half a buffer is written at once, without waiting for the interval.
func TestHalfFullFlushesAtOnce(t *testing.T) {
	var r recorder
	w := New(&r, time.Hour, 1000)
	defer w.Close()
	_, _ = w.Write(bytes.Repeat([]byte("x"), 499))
	time.Sleep(20 * time.Millisecond)
	if ws, _ := r.snapshot(); len(ws) != 0 {
		t.Fatal("flushed below half the buffer")
	}
	_, _ = w.Write([]byte("y"))
	waitFor(t, "the half-full flush", func() bool { return len(r.all()) == 500 })
}

// A destination that does not drain makes writers wait once the buffer is full; when it drains,
// every line of every writer arrives exactly once and each writer's lines in order.
func TestFullBufferWaitsAndLosesNothing(t *testing.T) {
	r := recorder{gate: make(chan struct{})}
	w := New(&r, time.Millisecond, 4096)
	const writers, lines = 8, 300
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				_, _ = fmt.Fprintf(w, "w%d %04d\n", g, i)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("all writers finished while the destination was blocked: the buffer is not bounded")
	case <-time.After(100 * time.Millisecond):
	}
	w.mu.Lock()
	held := len(w.buf)
	w.mu.Unlock()
	if held > 4096 {
		t.Fatalf("buffer holds %d bytes, limit 4096", held)
	}
	close(r.gate) // drain
	<-done
	_ = w.Close()
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(r.all(), "\n"), "\n") {
		var g, i int
		if _, err := fmt.Sscanf(line, "w%d %d", &g, &i); err != nil {
			t.Fatalf("garbled line %q", line)
		}
		if i != next[g] {
			t.Fatalf("writer %d: line %d after %d", g, i, next[g]-1)
		}
		next[g]++
	}
	for g, n := range next {
		if n != lines {
			t.Fatalf("writer %d: %d of %d lines arrived", g, n, lines)
		}
	}
}

// Close writes the rest out at once; lines written after it go straight through, in order.
func TestCloseFlushesAndWritesThrough(t *testing.T) {
	var r recorder
	w := New(&r, time.Hour, 1<<20)
	_, _ = w.Write([]byte("a\n"))
	_, _ = w.Write([]byte("b\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.all(); got != "a\nb\n" {
		t.Fatalf("after Close: %q", got)
	}
	_, _ = w.Write([]byte("c\n"))
	_ = w.Close()
	if got := r.all(); got != "a\nb\nc\n" {
		t.Fatalf("after a write past Close: %q", got)
	}
}

func TestFlush(t *testing.T) {
	var r recorder
	w := New(&r, time.Hour, 1<<20)
	defer w.Close()
	_, _ = w.Write([]byte("now\n"))
	w.Flush()
	if got := r.all(); got != "now\n" {
		t.Fatalf("after Flush: %q", got)
	}
}
