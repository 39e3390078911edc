package httpstream

import (
	"bufio"
	"net"
	"net/http"
)

// StatusRecorder remembers the status a handler answered with, for metrics, including upgrades:
// ReverseProxy writes a 101 on the hijacked connection itself, never through WriteHeader, so
// Hijack records it. Informational (1xx) headers are not the answer and are not recorded.
// Unwrap keeps Flush and Hijack reachable through http.ResponseController, which ReverseProxy
// uses for streaming and upgrades.
type StatusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *StatusRecorder) WriteHeader(code int) {
	if r.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *StatusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap returns the wrapped ResponseWriter, for http.ResponseController.
func (r *StatusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack hijacks the connection and records the upgrade.
func (r *StatusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil && r.code == 0 {
		r.code = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

// Status returns the recorded status (200 if the handler wrote nothing).
func (r *StatusRecorder) Status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}
