package kasd

import (
	"net/http"
	"slices"
	"strings"

	"github.com/qkas/qkas/api"
)

// headerOnly are the fields a trailer may not carry (RFC 9110 section 6.5.1: message framing,
// routing, authentication, request modifiers, response control and content handling): a
// recipient must not merge them into the header, but some do, and a trailer must not smuggle
// in what kasd's header rules keep out. Request trailers reach the service since kasd frames
// every chunked upload, and net/http collects every trailer a client sends; an independent
// security review got Authorization, Impersonate-User and Host through as request trailers,
// and Set-Cookie and Content-Length from an agent through as response trailers.
var headerOnly = map[string]bool{
	"Authorization": true, "Proxy-Authorization": true, "Cookie": true, "Set-Cookie": true,
	"Www-Authenticate": true, "Proxy-Authenticate": true, "Host": true,
	"Content-Length": true, "Content-Type": true, "Content-Encoding": true, "Content-Range": true,
	"Transfer-Encoding": true, "Trailer": true, "Te": true, "Connection": true, "Keep-Alive": true,
	"Upgrade": true, "Proxy-Connection": true, "Expect": true, "Range": true, "If-Range": true,
	"Max-Forwards": true, "Cache-Control": true, "If-Match": true, "If-None-Match": true,
	"If-Modified-Since": true, "If-Unmodified-Since": true, "Location": true, "Retry-After": true,
	"Vary": true, "Age": true, "Expires": true, "Date": true,
}

// trailerAllowed reports whether a trailer field named k (canonical) may pass, either way:
// nothing header-only, nothing kasd drops from a client's header (dropHeaders), no
// impersonation, and no Qkas- field (only kasd sets those).
func trailerAllowed(k string) bool {
	return !headerOnly[k] && !slices.Contains(dropHeaders, k) &&
		!strings.HasPrefix(k, "Impersonate-") && !strings.HasPrefix(k, "Qkas-") && k != api.HeaderError
}

// requestTrailer returns the trailers of a client's request body that reach the service.
func requestTrailer(t http.Header) http.Header {
	for k := range t {
		if !trailerAllowed(k) {
			out := make(http.Header, len(t))
			for k, vs := range t {
				if trailerAllowed(k) {
					out[k] = vs
				}
			}
			return out
		}
	}
	return t
}
