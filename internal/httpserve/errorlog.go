package httpserve

import (
	"log"
	"strings"

	"github.com/rs/zerolog"
)

// ErrorLog returns a standard logger for net/http's servers and httputil.ReverseProxy's
// ErrorLog that writes each line to l at debug level: their default is plain text on stderr,
// among the daemons' JSON lines ("httputil: ReverseProxy read error during body copy", TLS
// handshake errors), which a log pipeline cannot parse. What they report (a client that went
// away mid-body, a failed handshake) is counted in the daemons' metrics already.
func ErrorLog(l zerolog.Logger) *log.Logger {
	return log.New(errorLogWriter{l}, "", 0)
}

type errorLogWriter struct{ l zerolog.Logger }

func (w errorLogWriter) Write(p []byte) (int, error) {
	w.l.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
