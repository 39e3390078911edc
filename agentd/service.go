package agentd

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/upstream"
)

// ServiceHandler serves requests for a service implemented in the agent process (such as the
// Kubernetes API proxy) instead of a URL. req is the stream's accepted Request frame: its
// metadata carries what kasd authenticated about the caller (impersonation). Authorization and
// Impersonate-* headers from the caller have already been removed from r.
type ServiceHandler interface {
	ServeService(w http.ResponseWriter, r *http.Request, req *api.Request)
}

// RequestChecker is implemented by a ServiceHandler that refuses some requests from their head
// alone (the kubernetes service's policy). The agent asks it before it accepts the stream: a
// request with a body larger than kasd's replay buffer is accepted before the handler runs, and
// after that an error frame is no longer a refusal but a protocol error (api/SPEC.md), which
// kasd answers 502. A non-nil result is sent as the refusal; the handler never sees the request.
type RequestChecker interface {
	CheckRequest(req *api.Request) *api.Error
}

// service is one service the agent offers.
type service struct {
	name    string
	handler ServiceHandler
	url     *url.URL // nil for in-process handlers
}

// urlService proxies requests to a URL with a pooled transport. It is the agent's hot path and
// does only what a proxy behind kasd needs: kasd already removed hop-by-hop headers and the
// caller's credentials and set X-Forwarded-*, and httpstream carries heads without them.
type urlService struct {
	name      string
	base      *url.URL
	transport *upstream.Client
	m         *metrics
}

func newURLService(name string, u *url.URL, cfg Config, m *metrics) *urlService {
	s := &urlService{name: name, base: u, m: m}
	// A response head kasd would refuse is refused here, with the service named.
	s.transport = upstream.New(u, upstream.Options{DialTimeout: cfg.ServiceDialTimeout, MaxIdle: cfg.MaxIdleConnsPerService, MaxHead: api.MaxHeadSize})
	return s
}

// ServeService proxies r to the service. w is the stream's *httpstream.ResponseWriter (or wraps
// one).
func (s *urlService) ServeService(w http.ResponseWriter, r *http.Request, _ *api.Request) {
	// Built here and copied once by WithContext: not allocated twice.
	req := http.Request{
		Method:        r.Method,
		URL:           TargetURL(s.base, r.URL),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        r.Header,
		Body:          r.Body,
		ContentLength: r.ContentLength,
		Trailer:       r.Trailer,
		Host:          "", // the service's own host, as httputil.ProxyRequest.SetURL does
	}
	if r.ContentLength == 0 {
		req.Body = nil
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		r.Header["User-Agent"] = noUserAgent // don't let the transport add Go's default
	}
	out := req.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
			httpstream.WriteInterim(w, code, http.Header(hdr))
			return nil
		},
	}))
	resp, err := s.transport.RoundTrip(out)
	if err != nil {
		s.m.serviceErrors.WithLabelValues(s.name).Inc()
		s.m.countLimit(err)
		httpstream.WriteError(w, serviceError(s.name, r.Context(), err))
		return
	}
	defer resp.Body.Close()
	// Qkas-Error marks errors made by qkas itself; a service may not forge one (kasd strips it
	// too: only kasd sets it).
	resp.Header.Del(api.HeaderError)
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if e := switchError(s.name, r.Header, resp.Header); e != nil {
			s.m.serviceErrors.WithLabelValues(s.name).Inc()
			httpstream.WriteError(w, e)
			return
		}
		s.upgrade(w, resp)
		return
	}
	if len(resp.Trailer) > 0 {
		for k := range resp.Trailer {
			h.Add("Trailer", k)
		}
	} else if resp.ContentLength < 0 && len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked" {
		// A chunked body may end with trailers the head did not declare (net/http lets a
		// handler set http.TrailerPrefix keys at any time; http.ReadResponse puts them in
		// resp.Trailer at EOF): a framed body carries them, as httputil.ReverseProxy would.
		if fw, ok := w.(interface{ FrameBody() }); ok {
			fw.FrameBody()
		}
	}
	if resp.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	if _, err := httpstream.CopyBody(w, resp.Body, httpstream.Streaming(resp)); err != nil {
		// Writing to kasd failed (its client went away, the stream was stopped): not the
		// service's failure, even before the request's context has learnt it.
		if r.Context().Err() == nil && !errors.Is(err, httpstream.ErrClientWrite) {
			s.m.serviceErrors.WithLabelValues(s.name).Inc()
			s.m.countLimit(err)
		}
		httpstream.WriteError(w, serviceError(s.name, r.Context(), err)) // resets: head sent
		return
	}
	for k, vs := range resp.Trailer {
		h[http.TrailerPrefix+k] = vs
	}
}

// noUserAgent is an empty User-Agent header value: request headers are never modified in
// place (net/http reads them only), so one slice serves every request.
var noUserAgent = []string{""}

// TargetURL is the URL a request for path in reaches behind base: base's path joined with
// in's, escaping kept, and the queries joined, as httputil.ProxyRequest.SetURL does. URL
// services and the kubernetes service (agentd/kubernetes) both use it.
func TargetURL(base, in *url.URL) *url.URL {
	u := *base
	u.Path, u.RawPath = joinURLPath(base, in)
	switch {
	case base.RawQuery == "" || in.RawQuery == "":
		u.RawQuery = base.RawQuery + in.RawQuery
	default:
		u.RawQuery = base.RawQuery + "&" + in.RawQuery
	}
	return &u
}

func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath, bpath := a.EscapedPath(), b.EscapedPath()
	aslash, bslash := strings.HasSuffix(apath, "/"), strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

// upgrade switches the stream to the service's upgraded connection and copies both ways until
// both directions end.
func (s *urlService) upgrade(w http.ResponseWriter, resp *http.Response) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	sw, ok2 := w.(interface {
		Upgrade() (io.ReadWriteCloser, error)
	})
	if !ok || !ok2 {
		httpstream.WriteError(w, api.Errorf(api.CodeInternal, "service %s: cannot switch protocols here", s.name))
		return
	}
	front, err := sw.Upgrade()
	if err != nil {
		return
	}
	httpstream.Splice(front, back)
}

// switchError refuses a 101 that does not switch to the protocol the request asked for, as
// httputil.ReverseProxy does: a 101 to a request that asked for no switch (its stream cannot
// be switched), to another protocol than the one asked for, or naming none is no answer to it.
func switchError(name string, req, resp http.Header) *api.Error {
	asked, got := upgradeType(req), upgradeType(resp)
	if asked != "" && strings.EqualFold(asked, got) {
		return nil
	}
	return api.Errorf(api.CodeServiceUnavailable, "service %s switched protocols to %q; the request asked for %q", name, got, asked)
}

// upgradeType is the protocol a head's Upgrade names, if its Connection has the upgrade token.
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// unknownService is the refusal of a request for a service this agent does not offer: it names
// the services it does offer (api.ListNames bounds the list), so that a typo is found without
// reading the agent's configuration.
func (a *Agent) unknownService(name string) *api.Error {
	return api.Errorf(api.CodeServiceUnknown, "service %q is not offered by this agent; it offers %s", name, api.ListNames(a.svcs.Load().names))
}

// stripCredentials removes headers only the agent may set: a caller's credentials never reach
// the service, and impersonation is only ever derived from the authenticated request metadata.
func stripCredentials(h http.Header) {
	h.Del("Authorization")
	for k := range h {
		if strings.HasPrefix(k, "Impersonate-") {
			delete(h, k)
		}
	}
}

func serviceError(name string, ctx context.Context, err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return api.Errorf(api.CodeDeadlineExceeded, "service %q did not answer before the deadline", name)
	case errors.Is(err, context.Canceled):
		return api.Errorf(api.CodeClientCanceled, "request canceled")
	default:
		return &api.Error{Code: api.CodeServiceUnavailable, Message: "service " + name + ": " + err.Error(), Err: err}
	}
}
