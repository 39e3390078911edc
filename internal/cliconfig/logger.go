package cliconfig

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// NewLogger builds the daemons' logger from --log-level (debug, info, warn, error) and
// --log-format: json, console, or auto (console when stderr is a terminal, else JSON).
func NewLogger(level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	var w io.Writer = os.Stderr
	switch format {
	case "console":
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}
	case "auto":
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}
		}
	case "json":
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format must be json, console or auto")
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
