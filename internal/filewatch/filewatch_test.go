package filewatch_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/qkas/qkas/internal/filewatch"
)

// TestWatchKubernetesSecret: files mounted from a Secret are symlinks through `..data`, which
// an update swaps atomically; the watch sees it, once for both files (one settle), and a signal
// triggers at once. Unrelated files do not trigger.
func TestWatchKubernetesSecret(t *testing.T) {
	dir := t.TempDir()
	mkgen := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"tls.crt", "tls.key"} {
			if err := os.WriteFile(filepath.Join(dir, name, f), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	mkgen("..2026_01", "one")
	if err := os.Symlink("..2026_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan filewatch.Trigger, 16)
	sig := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- filewatch.Watch(ctx, filewatch.Config{
			Paths: []string{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), ""}, Signals: sig,
			Settle: 100 * time.Millisecond,
		}, func(t filewatch.Trigger) { got <- t })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	time.Sleep(100 * time.Millisecond) // the watch is set up
	expect := func(what string, want filewatch.Trigger, n int) {
		t.Helper()
		for range n {
			select {
			case tr := <-got:
				if tr != want {
					t.Fatalf("%s: trigger %q, want %q", what, tr, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: nothing reported", what)
			}
		}
		select {
		case tr := <-got:
			t.Fatalf("%s: more than %d reports (%q)", what, n, tr)
		case <-time.After(400 * time.Millisecond):
		}
	}
	// The kubelet's update: a new generation, a new ..data link renamed over the old one.
	mkgen("..2026_02", "two")
	if err := os.Symlink("..2026_02", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	expect("..data swap", filewatch.TriggerFile, 1)
	sig <- syscall.SIGHUP
	expect("signal", filewatch.TriggerSignal, 1)
	if err := os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	expect("unrelated file", filewatch.TriggerFile, 0)
}

// TestWatchNothing: no path and no signal is a usage error; a directory that does not exist,
// without signals to fall back on, is an error too.
func TestWatchNothing(t *testing.T) {
	if err := filewatch.Watch(context.Background(), filewatch.Config{}, func(filewatch.Trigger) {}); err == nil {
		t.Error("nothing to watch was accepted")
	}
	err := filewatch.Watch(context.Background(), filewatch.Config{Paths: []string{"/nonexistent/dir/file"}}, func(filewatch.Trigger) {})
	if err == nil {
		t.Error("an unwatchable path without signals was accepted")
	}
}
