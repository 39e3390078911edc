package load

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRunCountsAndQuantiles(t *testing.T) {
	var i int64
	res, err := Run(context.Background(), Options{Concurrency: 1, Requests: 100}, func(ctx context.Context) error {
		i++
		if i%10 == 0 {
			return errors.New("boom")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Samples) != 100 || res.Failed() != 10 || res.Errors()["boom"] != 10 {
		t.Fatalf("samples %d failed %d errors %v", len(res.Samples), res.Failed(), res.Errors())
	}
	// Nearest rank on a known set.
	r := &Result{}
	for i := 1; i <= 1000; i++ {
		r.Samples = append(r.Samples, Sample{Latency: time.Duration(i)})
	}
	if q := r.Quantile(0.5); q != 500 {
		t.Errorf("p50 = %d, want 500", q)
	}
	if q := r.Quantile(0.999); q != 999 {
		t.Errorf("p99.9 = %d, want 999", q)
	}
	if q := r.Quantile(1); q != 1000 {
		t.Errorf("max = %d, want 1000", q)
	}
}

func TestRunDuration(t *testing.T) {
	res, err := Run(context.Background(), Options{Concurrency: 4, Duration: 50 * time.Millisecond}, func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed() != 0 || res.OK() == 0 {
		t.Fatalf("ok %d failed %d", res.OK(), res.Failed())
	}
}
