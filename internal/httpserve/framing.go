package httpserve

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
)

// A request with both Content-Length and Transfer-Encoding may be an attempt to smuggle a
// request past a front proxy that frames it by its length: net/http frames it by
// Transfer-Encoding, as RFC 9112 §6.3 says, and deletes the Content-Length field, but keeps the
// connection open, where RFC 9112 §6.1 says a server MUST close it after responding. The server
// cannot see the deleted field, so each connection scans the bytes it reads for a
// Content-Length field line (framingScan); a request with a Transfer-Encoding on a connection
// that has carried one is answered with Connection: close (closeAmbiguous).
//
// Under TLS the wrapper sees only encrypted bytes (net/http needs the *tls.Conn itself, so the
// plaintext cannot be watched below it): there every HTTP/1.x request with a Transfer-Encoding
// is answered with Connection: close, which costs a client that sends chunked uploads a
// reconnect per upload and nothing else (HTTP/2 has no Transfer-Encoding).
//
// The scan is sticky and per connection, not per request: a client that sent a Content-Length
// on an earlier request (or whose body held such a line) and a chunked request later has its
// connection closed after the chunked one, which costs it a reconnect and nothing else. The
// scan stops once a field line was seen; on a connection that never carries one it costs one
// IndexByte pass over what is read.

// clField is the field name scanned for, lower case, with its colon (net/http refuses
// whitespace before the colon).
const clField = "content-length:"

// framingScan remembers whether a connection's bytes held a Content-Length field line.
type framingScan struct {
	mu   sync.Mutex
	seen bool
	tail []byte // the last len(clField) bytes read, for a line split between reads
}

// observe scans b, the bytes just read.
func (f *framingScan) observe(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen || len(b) == 0 {
		return
	}
	if len(f.tail) > 0 {
		// A line split between two reads: its '\n' in the tail.
		n := min(len(b), len(clField))
		j := append(append(make([]byte, 0, len(f.tail)+n), f.tail...), b[:n]...)
		if hasFieldLine(j) {
			f.seen = true
			return
		}
	}
	if hasFieldLine(b) {
		f.seen = true
		return
	}
	keep := len(clField)
	if len(b) >= keep {
		f.tail = append(f.tail[:0], b[len(b)-keep:]...)
		return
	}
	f.tail = append(f.tail, b...)
	if len(f.tail) > keep {
		f.tail = append(f.tail[:0], f.tail[len(f.tail)-keep:]...)
	}
}

func (f *framingScan) sawContentLength() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}

// hasFieldLine reports whether b holds "\n" followed by clField, in any case.
func hasFieldLine(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return false
		}
		b = b[i+1:]
		if len(b) < len(clField) {
			return false
		}
		if equalFoldLower(b[:len(clField)], clField) {
			return true
		}
	}
}

// equalFoldLower reports whether b equals lower, a lower-case ASCII string, in any case.
func equalFoldLower(b []byte, lower string) bool {
	for i := range len(lower) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

type connKey struct{}

// connContext puts the served connection's wrapper into its requests' contexts.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	if c := unwrap(nc); c != nil {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}

// closeAmbiguous answers a request that has a Transfer-Encoding, on a connection whose bytes
// held a Content-Length field, with Connection: close (see above).
func closeAmbiguous(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && r.ProtoMajor == 1 {
			if c, ok := r.Context().Value(connKey{}).(*conn); ok {
				c.served.Store(true) // this request's head was within the limit (tooLargeUnderTLS)
			}
		}
		if len(r.TransferEncoding) > 0 {
			if c, ok := r.Context().Value(connKey{}).(*conn); ok {
				switch {
				case c.tls && r.ProtoMajor == 1:
					w.Header().Set("Connection", "close") // not counted: every such request
				case c.framing.sawContentLength():
					c.srv.metrics.hit(c.srv.name, ReasonAmbiguousFraming)
					w.Header().Set("Connection", "close")
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}
