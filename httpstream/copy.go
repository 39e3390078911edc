package httpstream

import (
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/qkas/qkas/api"
)

// Streaming reports whether a response must reach the client as it is produced: Server-Sent
// Events and bodies of unknown length (chunked streams, watches, logs -f). A body of known length
// is written without a flush per write, so a small one leaves with its head.
func Streaming(resp *http.Response) bool {
	if resp.ContentLength < 0 {
		return true
	}
	return strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
}

// ErrClientWrite marks a failure to write to the client: the client went away.
var ErrClientWrite = errors.New("writing to the client failed")

// headHolder is a writer that keeps the head back until more body bytes come (this package's
// ResponseWriter, up to 16 KiB), so that a small body leaves with it in one write.
type headHolder interface {
	HeadPending() bool
}

// ReadyReader is a body that can tell, without waiting, whether its next Read returns at once:
// bytes of the body, its end or its error are already there. The bodies of internal/upstream's
// responses and of RoundTrip's implement it.
type ReadyReader interface {
	ReadReady() bool
}

// CopyBody copies body to w with a pooled buffer (32 KiB, 256 KiB once a read fills it: see
// copyBuf), flushing after each read when flush is set. A write (or flush) failure is returned
// wrapped in ErrClientWrite; a read failure as is.
//
// With flush set (a stream: see Streaming), the head written with WriteHeader is flushed before
// the first Read unless body is a ReadyReader that is ready. Both writers under CopyBody
// (net/http's, httpstream's) hold the head until the first write or flush, and a watch, a
// logs -f or an event stream may send its first bytes minutes after its head: the head must
// not wait for them (the client's header timeout runs meanwhile). A body that came with its
// head (the usual fast chunked response) leaves with it in one write, as before.
func CopyBody(w http.ResponseWriter, body io.Reader, flush bool) (int64, error) {
	cb := newCopyBuf()
	defer cb.release()
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
		if r, ok := body.(ReadyReader); !ok || !r.ReadReady() {
			if err := rc.Flush(); err != nil {
				return 0, errors.Join(ErrClientWrite, err)
			}
		}
	}
	// A writer that holds the head back for more body (agentd's, toward kasd) must not hold it
	// while the service is slow to send the rest of a body of known length: kasd's header
	// timeout (Qkas-Timeout, --response-header-timeout) runs until the head arrives, and the
	// service did answer. So the head goes before a read that would wait. Any other writer
	// (net/http's, toward kasd's client, which buffers 4 KiB) is flushed before a read that
	// would wait: neither the head nor the bytes already read sit in kasd while it waits for
	// the agent (a known-length body sent slowly reached the client 4 KiB at a time, its head
	// with the first 4 KiB). A body that is all there (the usual small response, its end
	// included) still leaves in one write at the handler's end.
	hh, _ := w.(headHolder)
	rr, _ := body.(ReadyReader)
	if !flush && rr != nil && !rr.ReadReady() {
		// The same before the first read: a service that sent its head and is slow to send
		// the first byte of a body of known length (an export, a file being made) did answer.
		// Its head held back, the client got 504 at the header timeout where, direct, it
		// had its head at once.
		rc = http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			return 0, errors.Join(ErrClientWrite, err)
		}
	}
	var total int64
	for {
		buf := cb.buf()
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, errors.Join(ErrClientWrite, werr)
			}
			total += int64(n)
			if flush || (rr != nil && err == nil && (hh == nil || hh.HeadPending()) && !rr.ReadReady()) {
				if rc == nil {
					rc = http.NewResponseController(w)
				}
				if ferr := rc.Flush(); ferr != nil {
					return total, errors.Join(ErrClientWrite, ferr)
				}
			}
			cb.used(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// WriteInterim passes a service's interim response (103 Early Hints, 102) on with its own
// header fields: w's header map holds them only for the WriteHeader that sends it. 100 Continue
// is not passed on (kasd answers it to its client itself), nor 101 or a final status, nor are
// hop-by-hop fields.
func WriteInterim(w http.ResponseWriter, code int, hdr http.Header) {
	if code <= http.StatusSwitchingProtocols || code >= 200 {
		return
	}
	h := w.Header()
	saved := h.Clone()
	clear(h)
	for k, vs := range hdr {
		h[k] = vs
	}
	for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer", api.HeaderError} {
		delete(h, k)
	}
	w.WriteHeader(code)
	clear(h)
	for k, vs := range saved {
		h[k] = vs
	}
}
