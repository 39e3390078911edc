//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRun is a smoke test of every phase, so that the harness keeps working; it asserts
// no performance.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Config{
		Warmup: 10, Requests: 100,
		Concurrency: 8, LoadDuration: 100 * time.Millisecond,
		TCP: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	if res.C1.N != 100 || res.TCP.N != 100 || res.LoadRequests == 0 {
		t.Errorf("phases incomplete: %v", res)
	}
	// Each stream takes at least one datagram each way.
	if res.C1Dgrams.C2S < 1 || res.C1Dgrams.S2C < 1 {
		t.Errorf("datagrams not counted: %+v", res.C1Dgrams)
	}
}

func TestSegments(t *testing.T) {
	gso := func(size uint16) []byte {
		b := make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], size)
		return b
	}
	tests := []struct {
		n    int
		oob  []byte
		want uint64
	}{
		{1200, nil, 1},
		{1200, gso(1200), 1},
		{3600, gso(1200), 3},
		{3601, gso(1200), 4},
		{100, []byte{1, 2, 3}, 1}, // unparsable: one datagram
	}
	for _, tt := range tests {
		if got := segments(tt.n, tt.oob); got != tt.want {
			t.Errorf("segments(%d, %x) = %d, want %d", tt.n, tt.oob, got, tt.want)
		}
	}
}

// BenchmarkStreamC1 is the latency of one request at a time: -benchtime sets the requests.
func BenchmarkStreamC1(b *testing.B) {
	bn, done := benchSetup(b, 1)
	defer done()
	sent0 := bn.sent()
	b.ResetTimer()
	lat, err := bn.sequential(b.Context(), b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	l := summarize(lat)
	b.ReportMetric(float64(l.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(l.P99.Microseconds()), "p99-µs")
	b.ReportMetric(bn.sent().sub(sent0).per(b.N).Total(), "datagrams/op")
}

// BenchmarkStreamC64 is the CPU cost of a request at concurrency 64 (both ends' CPU).
func BenchmarkStreamC64(b *testing.B) {
	bn, done := benchSetup(b, 64)
	defer done()
	b.ResetTimer()
	l, err := bn.load(b.Context(), b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(l.cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(l.sent.per(b.N).Total(), "datagrams/op")
}

func benchSetup(b *testing.B, concurrency int) (*bench, func()) {
	b.Helper()
	bn, err := startBench(b.Context(), Config{Concurrency: concurrency}.withDefaults())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := bn.sequential(b.Context(), 200); err != nil {
		bn.close()
		b.Fatal(err)
	}
	return bn, bn.close
}
