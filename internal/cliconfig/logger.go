package cliconfig

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/internal/logbuf"
)

// LogFlushFlag registers --log-flush-interval, the daemons' log batching (NewLogger).
func LogFlushFlag(fs *flag.FlagSet, p *time.Duration) {
	fs.DurationVar(p, "log-flush-interval", logbuf.DefaultFlushInterval,
		"write log lines to stderr in batches, at most this long after a batch's first line (one write per batch instead of one per line: an access line per request costs a system call otherwise); 0 writes each line at once")
}

// NewLogger builds the daemons' logger from --log-level (debug, info, warn, error),
// --log-format (json, console, or auto: console when stderr is a terminal, else JSON) and
// --log-flush-interval (0: unbuffered). The caller must Close the returned closer when it is
// done logging: it writes out the last batch and stops the batching goroutine.
func NewLogger(level, format string, flush time.Duration) (zerolog.Logger, io.Closer, error) {
	// Only the documented levels: zerolog also parses "" (NoLevel), fatal, panic and disabled,
	// each of which would silence errors too, and a daemon that logs nothing is not what a typo
	// or an empty KASD_LOG_LEVEL= should give.
	lvl, ok := logLevels[level]
	if !ok {
		return zerolog.Logger{}, nil, fmt.Errorf("--log-level must be debug, info, warn or error, got %q", level)
	}
	console := false
	switch format {
	case "console":
		console = true
	case "auto":
		fi, err := os.Stderr.Stat()
		console = err == nil && fi.Mode()&os.ModeCharDevice != 0
	case "json":
	default:
		return zerolog.Logger{}, nil, fmt.Errorf("--log-format must be json, console or auto")
	}
	if flush < 0 {
		return zerolog.Logger{}, nil, fmt.Errorf("--log-flush-interval must not be negative")
	}
	var out io.Writer = os.Stderr
	var closer io.Closer = nopCloser{}
	if flush > 0 {
		b := logbuf.New(os.Stderr, flush, logbuf.DefaultMaxBuffer)
		out, closer = b, b
	}
	var w io.Writer = out
	if console {
		w = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), closer, nil
}

// logLevels are --log-level's values.
var logLevels = map[string]zerolog.Level{
	"debug": zerolog.DebugLevel, "info": zerolog.InfoLevel, "warn": zerolog.WarnLevel, "error": zerolog.ErrorLevel,
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
