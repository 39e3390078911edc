package auth

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// tokenWatchSettle is how long the tokens file's directory must be quiet before a change is
// reloaded: an editor or `kasctl agent-token` writes, renames and chmods in a burst, and a file
// of hundreds of thousands of agents is worth reading once, not once per event.
const tokenWatchSettle = 250 * time.Millisecond

// WatchTokenStore reloads s ([TokenStore.Reload]) whenever its file changes, until ctx ends,
// and hands each reload's result to report (nil is fine). It watches the file's directory, not
// the file: editors, `kasctl agent-token` and Kubernetes (which swaps a `..data` symlink) replace
// the file by renaming, which a watch on the old file would not see. Events for other files in
// the directory are ignored. It returns nil when ctx ends, or an error when the watch cannot be
// set up. It runs in the caller's goroutine; the watcher's own goroutine is gone when it returns.
func WatchTokenStore(ctx context.Context, s *TokenStore, report func(error)) error {
	if s == nil || s.path == "" {
		return errors.New("agent tokens file: this store was not loaded from a file")
	}
	if report == nil {
		report = func(error) {}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("agent tokens file: watch: %w", err)
	}
	defer w.Close()
	dir, base := filepath.Split(filepath.Clean(s.path))
	if dir == "" {
		dir = "."
	}
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("agent tokens file: watch %s: %w", dir, err)
	}
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if name := filepath.Base(ev.Name); name == base || strings.HasPrefix(name, "..") {
				settle.Reset(tokenWatchSettle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflowed event queue may have hidden a change: reload to be sure.
			report(fmt.Errorf("agent tokens file: watch: %w", err))
			settle.Reset(tokenWatchSettle)
		case <-settle.C:
			report(s.Reload())
		}
	}
}
