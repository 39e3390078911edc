package agentd

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/qkas/qkas/api"
)

// ServiceHandler serves requests for a service implemented in the agent process (such as the
// Kubernetes API proxy) instead of a URL. req is the stream's accepted Request frame: its
// metadata carries what kasd authenticated about the caller (impersonation). Authorization and
// Impersonate-* headers from the caller have already been removed from r.
type ServiceHandler interface {
	ServeService(w http.ResponseWriter, r *http.Request, req *api.Request)
}

// service is one service the agent offers.
type service struct {
	name    string
	handler ServiceHandler
	url     *url.URL // nil for in-process handlers
}

// urlService proxies requests to a URL with a pooled transport.
type urlService struct {
	transport *http.Transport
	proxy     *httputil.ReverseProxy
}

func (s *urlService) ServeService(w http.ResponseWriter, r *http.Request, _ *api.Request) {
	s.proxy.ServeHTTP(w, r)
}

func newURLService(name string, u *url.URL, cfg Config, m *metrics) *urlService {
	s := &urlService{}
	s.transport = &http.Transport{
		Proxy: nil, // in-cluster services are reached directly, never through an HTTP proxy
		DialContext: (&net.Dialer{
			Timeout:   cfg.ServiceDialTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		// Sized for the concurrency the agent serves: a pool that keeps only a few idle
		// connections makes a busy agent re-dial its service for most requests.
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerService,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A proxy must not change Accept-Encoding or decompress bodies.
		DisableCompression: true,
		WriteBufferSize:    32 << 10,
		ReadBufferSize:     32 << 10,
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// kasd set X-Forwarded-* from the real client; keep them (Rewrite starts without).
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v := pr.In.Header.Values(h); len(v) > 0 {
					pr.Out.Header[h] = v
				}
			}
			stripCredentials(pr.Out.Header)
		},
		Transport: s.transport,
		// Qkas-Error marks errors made by qkas itself; a service may not forge one.
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del(api.HeaderError)
			return nil
		},
		// 0: ReverseProxy flushes at once for Server-Sent Events and bodies of unknown length
		// (chunked streams, watches); fixed-length bodies leave in one write.
		FlushInterval: 0,
		BufferPool:    copyBuffers,
		ErrorLog:      nil,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			m.serviceErrors.WithLabelValues(name).Inc()
			api.WriteHTTPError(w, serviceError(name, r.Context(), err))
		},
	}
	return s
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
		return api.Errorf(api.CodeAgentFailed, "request canceled")
	default:
		return &api.Error{Code: api.CodeServiceUnavailable, Message: "service " + name + ": " + err.Error(), Err: err}
	}
}

// copyBuffers is the ReverseProxy buffer pool: 32 KiB buffers shared by all services.
var copyBuffers = &bufferPool{sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(p []byte) { b.p.Put(&p) }
