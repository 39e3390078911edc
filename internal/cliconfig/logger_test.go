package cliconfig

import (
	"strings"
	"testing"
)

// TestLogLevels: --log-level takes debug, info, warn or error, as the daemons' help says. It
// took anything zerolog parses: an empty value (KASD_LOG_LEVEL=, "log-level:" with nothing in a
// config file) is zerolog's NoLevel, and "fatal", "panic" or "disabled" are above error, so the
// daemon ran without writing a single line, errors included.
func TestLogLevels(t *testing.T) {
	for _, level := range []string{"debug", "info", "warn", "error"} {
		log, closer, err := NewLogger(level, "json", 0)
		if err != nil {
			t.Fatalf("--log-level %s: %v", level, err)
		}
		if !log.Error().Enabled() {
			t.Errorf("--log-level %s: errors are not logged", level)
		}
		closer.Close()
	}
	for _, level := range []string{"", "fatal", "panic", "disabled", "trace", "3", "INFO "} {
		if _, _, err := NewLogger(level, "json", 0); err == nil || !strings.Contains(err.Error(), "--log-level") {
			t.Errorf("--log-level %q: %v, want an error naming the flag", level, err)
		}
	}
}
