package kubernetes

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/httpserve"
)

// Metadata keys of api.Request that this service reads (set by kasd from the client JWT).
const (
	MetaImpersonateUser  = "impersonate-user"
	MetaImpersonateGroup = "impersonate-group"
)

// Config configures a Service.
type Config struct {
	// REST says how to reach and authenticate to the API server (LoadRESTConfig). Required.
	// It must not impersonate by itself: impersonation comes from the client JWT only.
	REST *rest.Config
	// Policy limits the requests passed on. Default nil: everything the agent's identity may do.
	Policy *Policy
	// Registerer receives the service's metrics. Default: a private registry.
	Registerer prometheus.Registerer
	// Log receives debug logs of proxy errors. Default: zerolog.Nop().
	Log *zerolog.Logger
	// MaxIdleConns is the number of idle HTTP/1.1 connections to the API server kept for
	// ordinary requests. Default 256, as agentd's MaxIdleConnsPerService: at 64 concurrent
	// requests none is re-dialled.
	MaxIdleConns int
}

// LoadRESTConfig returns the in-cluster configuration (the pod's ServiceAccount token, CA and
// the KUBERNETES_SERVICE_HOST/PORT address) when kubeconfig is "", else the current context of
// the kubeconfig file.
func LoadRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// Service proxies requests to the Kubernetes API server. It implements agentd.ServiceHandler.
type Service struct {
	policy    *Policy
	base      *url.URL          // the API server's URL (scheme, host, path prefix)
	transport http.RoundTripper // ordinary requests (apiTransport)
	closeIdle func()            // closes transport's idle connections
	kind      string            // transport's kind: transportUpstream or transportClientGo
	upgrade   http.RoundTripper // HTTP/1.1 only: protocol upgrades
	upgradeT  *http.Transport   // upgrade's base, for Close; nil if REST.Transport was given
	proxy     *httputil.ReverseProxy
	m         *metrics
	log       zerolog.Logger
}

// New builds a Service from cfg.
func New(cfg Config) (*Service, error) {
	if cfg.REST == nil {
		return nil, errors.New("kubernetes: a REST config is required")
	}
	if imp := cfg.REST.Impersonate; imp.UserName != "" || imp.UID != "" || len(imp.Groups) > 0 || len(imp.Extra) > 0 {
		return nil, errors.New("kubernetes: the REST config must not impersonate; impersonation comes from the client's token")
	}
	if cfg.Policy != nil {
		if err := cfg.Policy.Validate(); err != nil {
			return nil, err
		}
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	s := &Service{policy: cfg.Policy, log: zerolog.Nop()}
	if cfg.Log != nil {
		s.log = *cfg.Log
	}
	base, _, err := rest.DefaultServerUrlFor(cfg.REST)
	if err != nil {
		return nil, err
	}
	s.base = base
	if cfg.MaxIdleConns <= 0 {
		cfg.MaxIdleConns = 256
	}
	if s.transport, s.closeIdle, s.kind, err = apiTransport(cfg.REST, base, cfg.MaxIdleConns, &s.log); err != nil {
		return nil, err
	}
	s.log.Debug().Str("transport", s.kind).Msg("kubernetes API server transport for ordinary requests")
	if s.upgrade, s.upgradeT, err = upgradeTransport(cfg.REST); err != nil {
		return nil, err
	}
	if s.upgrade == nil {
		s.upgrade = s.transport // cfg.REST.Transport (rest.TransportFor over it) serves everything
	}
	if s.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	// Upgrades only (exec, attach, port-forward): ReverseProxy's switch of protocols and its
	// two copy goroutines. Every other request takes forward, the hot path.
	s.proxy = &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { rewrite(pr, base) },
		Transport: roundTripperFunc(s.upgrade.RoundTrip),
		ErrorLog:  httpserve.ErrorLog(s.log),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			req, _ := r.Context().Value(requestKey{}).(*api.Request)
			s.proxyError(w, r, req, err)
		},
	}
	return s, nil
}

// upgradeTransport builds the HTTP/1.1 transport for upgrade requests, with the TLS
// configuration (CA, client certificate) and the authentication wrappers of cfg. It returns a
// nil RoundTripper when cfg supplies its own Transport: that one is used for everything.
func upgradeTransport(cfg *rest.Config) (http.RoundTripper, *http.Transport, error) {
	if cfg.Transport != nil {
		return nil, nil, nil
	}
	tlsConf, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, nil, err
	}
	if tlsConf != nil {
		tlsConf = tlsConf.Clone()
		tlsConf.NextProtos = []string{"http/1.1"} // an upgrade needs HTTP/1.1
	}
	proxy := http.ProxyFromEnvironment // what client-go's transport does by default
	if cfg.Proxy != nil {
		proxy = cfg.Proxy
	}
	dial := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if cfg.Dial != nil {
		dial = cfg.Dial
	}
	t := &http.Transport{
		Proxy:               proxy,
		DialContext:         dial,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 2, // only refused upgrades leave a connection to reuse
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	rt, err := rest.HTTPWrappersForConfig(cfg, t)
	if err != nil {
		return nil, nil, err
	}
	return rt, t, nil
}

// rewrite points the request at the API server (scheme, host and path prefix of base) and
// leaves only the agent's authentication and the JWT's impersonation on it.
func rewrite(pr *httputil.ProxyRequest, base *url.URL) {
	pr.SetURL(base)
	// kasd set X-Forwarded-For from the real client; the API server records it in audit logs.
	if v := pr.In.Header.Values("X-Forwarded-For"); len(v) > 0 {
		pr.Out.Header["X-Forwarded-For"] = v
	}
	req, _ := pr.In.Context().Value(requestKey{}).(*api.Request)
	outgoingHeader(pr.Out.Header, req)
}

// outgoingHeader leaves on h, a request head bound for the API server, only the agent's
// authentication and the JWT's impersonation: it removes Authorization and
// Proxy-Authorization (agentd already removed the caller's; removing again keeps the invariant
// local to this file, and the bearer-token round tripper does not replace an Authorization
// header that is present), every Impersonate-* header, the request-header authentication
// headers (X-Remote-User, -Group, -Extra-*), and Forwarded and X-Forwarded-Host/-Proto (kasd's
// view of its client, which the API server never saw before either; X-Forwarded-For stays for
// its audit log). Then it sets Impersonate-User and one Impersonate-Group per value from req's
// metadata (kasd's, from the client JWT), if any.
func outgoingHeader(h http.Header, req *api.Request) {
	for k := range h {
		switch {
		case k == "Authorization", k == "Proxy-Authorization", k == "Forwarded", k == "X-Forwarded-Host", k == "X-Forwarded-Proto",
			strings.HasPrefix(k, "Impersonate-"), k == "X-Remote-User", k == "X-Remote-Group", strings.HasPrefix(k, "X-Remote-Extra-"):
			delete(h, k)
		}
	}
	if req == nil {
		return
	}
	if user, ok := req.MetaValue(MetaImpersonateUser); ok && user != "" {
		h["Impersonate-User"] = []string{user}
		for _, g := range req.MetaValues(MetaImpersonateGroup) {
			h.Add("Impersonate-Group", g)
		}
	}
}

type requestKey struct{}

// CheckRequest applies the Policy to a request head before agentd accepts the stream
// (agentd.RequestChecker): a denied request is refused there, with a 403 that reaches the client
// whatever its body. Once a request with a large body is accepted, an error frame is no longer
// a refusal (api/SPEC.md), and kasd answered such a denial 502 agent_failed. A target that does
// not parse is left to the agent's own refusal.
func (s *Service) CheckRequest(f *api.Request) *api.Error {
	if s.policy == nil {
		return nil
	}
	u, err := url.ParseRequestURI(f.Target)
	if err != nil {
		return nil
	}
	return s.check(requestVerb(f.Method, u.Path, u.Query()), u.Path)
}

// check applies the Policy (if any) to a request for the decoded path reqPath with verb, and
// counts a denial.
func (s *Service) check(verb, reqPath string) *api.Error {
	d := s.policy.decide(reqPath, verb)
	if d == allowed {
		return nil
	}
	s.m.denied.WithLabelValues(string(d)).Inc()
	s.m.requests.WithLabelValues(verb, strconv.Itoa(api.CodeForbidden.HTTPStatus())).Inc()
	return api.Errorf(api.CodeForbidden, "the agent's kubernetes policy does not allow %s %s (%s)", verb, reqPath, denialReason(d))
}

// ServeService proxies one request. req is the stream's accepted Request frame. Under agentd the
// Policy was applied by CheckRequest already; it is applied again here for other callers.
func (s *Service) ServeService(w http.ResponseWriter, r *http.Request, req *api.Request) {
	verb := requestVerb(r.Method, r.URL.Path, r.URL.Query())
	if e := s.check(verb, r.URL.Path); e != nil {
		httpstream.WriteError(w, e)
		return
	}
	if req == nil {
		req = &api.Request{}
	}
	// Counted in a defer: a response cut after its head (a watch whose client went away, an
	// API server that ended it early) is aborted with panic(http.ErrAbortHandler), by forward
	// and by ReverseProxy, and the stream is reset by whoever recovers it.
	var status int
	var rec *httpstream.StatusRecorder
	defer func() {
		if rec != nil {
			status = rec.Status()
		}
		s.m.requests.WithLabelValues(verb, strconv.Itoa(status)).Inc()
	}()
	if httpstream.IsUpgrade(r) {
		r = r.WithContext(context.WithValue(r.Context(), requestKey{}, req))
		rec = &httpstream.StatusRecorder{ResponseWriter: w}
		s.proxy.ServeHTTP(rec, r)
	} else {
		s.forward(w, r, req, &status)
	}
}

// forward proxies a request that is not an upgrade and sets *status to the status sent. It is the
// kubernetes service's hot path and does what urlService does for any other service: one
// outgoing request built from the incoming one (whose head agentd owns: kasd already removed
// hop-by-hop headers and set X-Forwarded-*), the round trip on the calling goroutine, the
// response copied with a pooled buffer. httputil.ReverseProxy, which it replaces here, cloned
// the request and its headers and allocated a 32 KiB copy buffer per response: a third of the
// service's cost per request (BenchmarkServeService). The headers are those rewrite leaves:
// the agent's credentials come from the transport, impersonation from req only. *status is set
// as soon as the status is known: a response cut after its head aborts (panics).
func (s *Service) forward(w http.ResponseWriter, r *http.Request, req *api.Request, status *int) {
	h := r.Header
	outgoingHeader(h, req)
	// Built here and copied once by WithContext: not allocated twice.
	o := http.Request{
		Method:        r.Method,
		URL:           agentd.TargetURL(s.base, r.URL),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          r.Body,
		ContentLength: r.ContentLength,
		// No request trailers: the API server takes none, and outgoingHeader's rules
		// (credentials, impersonation) could not apply to fields that come after the body.
		Host: "", // the API server's own host, as httputil.ProxyRequest.SetURL does
	}
	if r.ContentLength == 0 {
		o.Body = nil
	}
	out := o.WithContext(r.Context())
	resp, err := s.transport.RoundTrip(out)
	if err != nil {
		*status = s.proxyError(w, r, req, err)
		return
	}
	defer resp.Body.Close()
	*status = resp.StatusCode
	rh := w.Header()
	for k, vs := range resp.Header {
		rh[k] = vs
	}
	for _, k := range hopHeaders {
		delete(rh, k)
	}
	// Qkas-Error marks errors made by qkas itself: the API server's responses never carry it.
	delete(rh, api.HeaderError)
	for k := range resp.Trailer {
		rh.Add("Trailer", k)
	}
	switch {
	case len(resp.Trailer) > 0:
		delete(rh, "Content-Length") // trailers need a framed (chunked) body, as ReverseProxy does
	case resp.ContentLength >= 0:
		rh["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	// Watches and logs -f (no Content-Length) are flushed read by read; a response of known
	// length leaves agentd as head, body and end in one stream write.
	if _, err := httpstream.CopyBody(w, resp.Body, httpstream.Streaming(resp)); err != nil {
		if !errors.Is(err, httpstream.ErrClientWrite) && r.Context().Err() == nil {
			s.log.Warn().Err(err).Str("request_id", req.RequestID).Str("method", r.Method).Str("path", r.URL.Path).
				Msg("kubernetes API server response cut")
		}
		if r.Context().Value(http.ServerContextKey) != nil {
			// Served by net/http or by agentd (httpstream.NewRequest sets the key too): abort
			// the response as ReverseProxy does, so that it cannot pass for a complete one;
			// whoever recovers it resets the stream or the connection. ServeService counts it.
			panic(http.ErrAbortHandler)
		}
		httpstream.WriteError(w, api.Errorf(api.CodeAgentFailed, "the Kubernetes API server's response was cut")) // resets: head sent
		return
	}
	for k, vs := range resp.Trailer {
		rh[http.TrailerPrefix+k] = vs
	}
}

// hopHeaders are the hop-by-hop response headers (RFC 9110 7.6.1) that an HTTP/1.1 API server
// may send and that end at the agent, as httputil.ReverseProxy removes them.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func denialReason(d denial) string {
	switch d {
	case deniedVerb:
		return "verb not allowed for this path"
	case deniedPathNotCanonic:
		return "path has empty, . or .. segments"
	default:
		return "path not allowed"
	}
}

// Close closes idle connections to the API server. Requests in flight are not affected.
func (s *Service) Close() {
	if s.upgradeT != nil {
		s.upgradeT.CloseIdleConnections()
	}
	s.closeIdle()
}

// proxyError answers a request the API server did not answer. The client sees what kind of
// failure it was (agentd.PublicCause), never the API server's in-cluster address or the text of
// a dial or TLS error; the full error is logged with the request id.
// It returns the status written.
func (s *Service) proxyError(w http.ResponseWriter, r *http.Request, req *api.Request, err error) int {
	var e *api.Error
	ev := s.log.Warn()
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(r.Context().Err(), context.DeadlineExceeded):
		e = api.Errorf(api.CodeDeadlineExceeded, "the Kubernetes API server did not answer before the deadline")
	case errors.Is(err, context.Canceled) || r.Context().Err() != nil:
		e = api.Errorf(api.CodeAgentFailed, "request canceled")
		ev = s.log.Debug() // kasd or its client went away: nothing to report
	default:
		e = &api.Error{Code: api.CodeServiceUnavailable, Message: "the Kubernetes API server could not be reached by the agent: " + agentd.PublicCause(err), Err: err}
	}
	var id string
	if req != nil {
		id = req.RequestID
	}
	ev.Err(err).Str("request_id", id).Str("method", r.Method).Str("path", r.URL.Path).Str("code", e.Code.String()).Msg("kubernetes API server request failed")
	httpstream.WriteError(w, e)
	return e.Code.HTTPStatus()
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// logWriter sends ReverseProxy's log lines (such as copy errors of upgraded connections) to
// zerolog at debug level.
