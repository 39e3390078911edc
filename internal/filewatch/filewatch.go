package filewatch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultSettle is how long the watched directories must be quiet before a change is reported:
// long enough to gather one save's events (or a certificate and its key), short enough that a
// rotation is in use at once.
const DefaultSettle = 250 * time.Millisecond

// Trigger says why changed was called.
type Trigger string

const (
	// TriggerFile: a watched file (or a `..data` symlink of its directory) changed.
	TriggerFile Trigger = "file change"
	// TriggerSignal: a value arrived on the signals channel (SIGHUP).
	TriggerSignal Trigger = "SIGHUP"
	// TriggerWatchError: the watcher reported an error (an overflowed event queue may have
	// hidden a change), so the files are re-read to be sure.
	TriggerWatchError Trigger = "watch error"
)

// Config says what Watch watches.
type Config struct {
	// Paths are the files whose change is reported. Empty entries are ignored. If no path is
	// left, only Signals trigger changed.
	Paths []string
	// Signals, if not nil, triggers changed at once on every value (SIGHUP).
	Signals <-chan os.Signal
	// Settle is how long the directories must be quiet before a change is reported. Default
	// DefaultSettle.
	Settle time.Duration
	// WatchError, if not nil, is told about errors of the watcher (which then re-reads), and
	// about a directory that cannot be watched when there are Signals (Watch then goes on with
	// them only; without Signals, Watch returns that error).
	WatchError func(error)
}

// Watch calls changed when one of cfg.Paths changes and on every signal, until ctx ends; then
// it returns nil. It returns an error for an unusable Config (no path and no signal) and when
// the files cannot be watched and there are no Signals to fall back on.
func Watch(ctx context.Context, cfg Config, changed func(Trigger)) error {
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.WatchError == nil {
		cfg.WatchError = func(error) {}
	}
	targets := map[string]bool{} // absolute paths watched
	dirs := map[string]bool{}
	for _, p := range cfg.Paths {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("filewatch: %s: %w", p, err)
		}
		targets[abs] = true
		dirs[filepath.Dir(abs)] = true
	}
	if len(targets) == 0 && cfg.Signals == nil {
		return errors.New("filewatch: nothing to watch")
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if len(dirs) > 0 {
		w, err := fsnotify.NewWatcher()
		if err == nil {
			for d := range dirs {
				if err = w.Add(d); err != nil {
					err = fmt.Errorf("watch %s: %w", d, err)
					break
				}
			}
		}
		if err != nil {
			if w != nil {
				w.Close()
			}
			if cfg.Signals == nil {
				return fmt.Errorf("filewatch: %w", err)
			}
			// inotify limits, say: signals still trigger.
			cfg.WatchError(fmt.Errorf("filewatch: %w", err))
		} else {
			defer w.Close()
			events, errs = w.Events, w.Errors
		}
	}
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	pending := TriggerFile
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-cfg.Signals:
			changed(TriggerSignal)
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// The file itself, or a Kubernetes volume's `..data` / `..2026_…` entries that
			// change where every file of the directory points.
			if targets[filepath.Clean(ev.Name)] || strings.HasPrefix(filepath.Base(ev.Name), "..") {
				settle.Reset(cfg.Settle)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			cfg.WatchError(fmt.Errorf("filewatch: %w", err))
			pending = TriggerWatchError
			settle.Reset(cfg.Settle)
		case <-settle.C:
			changed(pending)
			pending = TriggerFile
		}
	}
}
