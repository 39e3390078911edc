package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
)

// TestWatchTokensSIGHUP: SIGHUP reloads the agent tokens file; a bad file keeps the previous one
// and is counted; the goroutines end with the context.
func TestWatchTokensSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	tokA, tokB := auth.NewAgentToken(), auth.NewAgentToken()
	write := func(s string) {
		t.Helper()
		// Written in place (no rename), so only SIGHUP or the directory watch can notice.
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("agents:\n- id: a\n  token_sha256: " + auth.TokenSHA256(tokA) + "\n")
	store, err := auth.LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	watchTokens(gctx, g, kasd.TokenFileAuth{Store: store}, zerolog.Nop(), reg)
	defer func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	write("agents:\n- id: b\n  token_sha256: " + auth.TokenSHA256(tokB) + "\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("the new file", func() bool { _, ok := store.Lookup(tokB); return ok })
	write("agents: [")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("the bad file to be counted", func() bool { _, failed := store.ReloadCounts(); return failed >= 1 })
	if id, ok := store.Lookup(tokB); !ok || id != "b" {
		t.Fatal("a bad file replaced the tokens in use")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetValue()
			}
			got[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if got["kasd_agent_tokens"] != 1 || got["kasd_agent_tokens_reloads_total,ok"] < 1 || got["kasd_agent_tokens_reloads_total,error"] < 1 {
		t.Fatalf("metrics %v", got)
	}
}
