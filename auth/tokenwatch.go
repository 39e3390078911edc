package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qkas/qkas/internal/filewatch"
)

// tokenWatchSettle is how long the tokens file's directory must be quiet before a change is
// reloaded: an editor or `kasctl agent-token` writes, renames and chmods in a burst, and a file
// of hundreds of thousands of agents is worth reading once, not once per event.
const tokenWatchSettle = 250 * time.Millisecond

// WatchTokenStore reloads s ([TokenStore.Reload]) whenever its file changes, until ctx ends,
// and hands each reload's result to report (nil is fine). It watches the file's directory, not
// the file (internal/filewatch): editors, `kasctl agent-token` and Kubernetes (which swaps a
// `..data` symlink) replace the file by renaming, which a watch on the old file would not see.
// Events for other files in the directory are ignored. It returns nil when ctx ends, or an
// error when the watch cannot be set up. It runs in the caller's goroutine; the watcher's own
// goroutine is gone when it returns.
func WatchTokenStore(ctx context.Context, s *TokenStore, report func(error)) error {
	if s == nil || s.path == "" {
		return errors.New("agent tokens file: this store was not loaded from a file")
	}
	if report == nil {
		report = func(error) {}
	}
	err := filewatch.Watch(ctx, filewatch.Config{
		Paths:  []string{s.path},
		Settle: tokenWatchSettle,
		// An overflowed event queue may have hidden a change: the store is reloaded after it.
		WatchError: func(err error) { report(fmt.Errorf("agent tokens file: watch: %w", err)) },
	}, func(filewatch.Trigger) { report(s.Reload()) })
	if err != nil {
		return fmt.Errorf("agent tokens file: %w", err)
	}
	return nil
}
