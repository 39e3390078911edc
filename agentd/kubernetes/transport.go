package kubernetes

import (
	"bytes"
	"crypto/x509"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/internal/upstream"
)

// Transport kinds of ordinary requests (Service.kind, logged by New at debug level).
const (
	// transportUpstream: internal/upstream, HTTP/1.1 written and read on the stream's own
	// goroutine, under client-go's authentication wrappers.
	transportUpstream = "upstream"
	// transportClientGo: rest.TransportFor (http.Transport, HTTP/2 where offered): a
	// rest.Config with its own Transport, or an API server reached through an HTTP proxy.
	transportClientGo = "client-go"
)

// now is the clock of CA rotation; tests move it.
var now = time.Now

// caRefreshEvery is how often the CA file is re-read, as client-go's transport does.
const caRefreshEvery = 5 * time.Minute

// apiTransport builds the round tripper of ordinary requests (every request but upgrades) to
// the API server at base, and a function that closes its idle connections.
//
// The base is an internal/upstream client: HTTP/1.1, the request written and the response
// read by the calling goroutine, which measured 270 µs less per request at one request at a
// time than rest.TransportFor's HTTP/2 (its reader goroutine hands every response over) and
// less CPU at 64 concurrent requests, since up to maxIdle connections stay pooled. Everything
// else is client-go's, from cfg.TransportConfig, exactly as rest.TransportFor builds it: the TLS
// configuration (transport.TLSConfigFor: CA, server name, insecure, the client certificate
// re-read from its files or taken from an exec plugin), the dialer (cfg.Dial, or an exec
// plugin's, which closes connections when its certificate rotates) and the wrappers
// (transport.HTTPWrappersForConfig: the bearer token or token file re-read as it rotates,
// basic auth, exec and auth-provider plugins, WrapTransport, user agent). A CA file is re-read
// every 5 minutes when client-go would (ClientsAllowCARotation), see caRotation.
//
// Where upstream cannot do what client-go does, rest.TransportFor is used unchanged: a
// rest.Config with its own Transport, and an API server reached through an HTTP proxy
// (cfg.Proxy, or HTTPS_PROXY and friends): upstream does not speak CONNECT.
func apiTransport(cfg *rest.Config, base *url.URL, maxIdle int, log *zerolog.Logger) (rt http.RoundTripper, closeIdle func(), kind string, err error) {
	if cfg.Transport != nil || (base.Scheme != "https" && base.Scheme != "http") || viaProxy(cfg, base) {
		rt, err := rest.TransportFor(cfg)
		if err != nil {
			return nil, nil, "", err
		}
		closeIdle := func() {
			if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
				c.CloseIdleConnections()
			}
		}
		return rt, closeIdle, transportClientGo, nil
	}
	tc, err := cfg.TransportConfig()
	if err != nil {
		return nil, nil, "", err
	}
	tlsConf, err := transport.TLSConfigFor(tc) // loads the files; sets tc.TLS.Reload* as client-go does
	if err != nil {
		return nil, nil, "", err
	}
	o := upstream.Options{
		TLS:         tlsConf,
		DialTimeout: 40 * time.Second, // client-go's dial (30s) and TLS handshake (10s) timeouts
		MaxIdle:     maxIdle,
		MaxHead:     api.MaxHeadSize, // what kasd would refuse is refused here, with the cause logged
	}
	if tc.DialHolder != nil {
		o.Dial = tc.DialHolder.Dial
	}
	var base0 http.RoundTripper
	if base.Scheme == "https" && tc.TLS.ReloadCAFiles && tlsConf != nil && tlsConf.RootCAs != nil && tc.TLS.CAFile != "" {
		r := &caRotation{file: tc.TLS.CAFile, data: tc.TLS.CAData, base: base, opts: o, log: log, now: now}
		r.client, r.checked = upstream.New(base, o), r.now()
		base0, closeIdle = r, r.closeIdle
	} else {
		c := upstream.New(base, o)
		base0, closeIdle = c, c.CloseIdleConnections
	}
	if rt, err = transport.HTTPWrappersForConfig(tc, base0); err != nil {
		return nil, nil, "", err
	}
	return rt, closeIdle, transportUpstream, nil
}

// viaProxy reports whether client-go would send requests to base through an HTTP proxy.
func viaProxy(cfg *rest.Config, base *url.URL) bool {
	proxy := http.ProxyFromEnvironment // client-go's default
	if cfg.Proxy != nil {
		proxy = cfg.Proxy
	}
	p, err := proxy(&http.Request{URL: base})
	return err != nil || p != nil // an error: let client-go report it
}

// caRotation re-reads the API server's CA bundle file every caRefreshEvery, on the request
// that finds the last check too old, as client-go's transport does for a CA given as a file
// (the in-cluster ServiceAccount's ca.crt): when the bytes changed and parse, later
// connections are verified with the new roots (a new upstream client) and the old client is
// closed (its idle connections now, the others when their exchange ends). A file that cannot
// be read, is empty or does not parse keeps the roots in use.
type caRotation struct {
	file string
	base *url.URL
	opts upstream.Options
	log  *zerolog.Logger
	now  func() time.Time

	mu      sync.RWMutex // guards the fields below
	client  *upstream.Client
	data    []byte // the bundle in use
	checked time.Time
}

func (r *caRotation) RoundTrip(req *http.Request) (*http.Response, error) {
	return r.current().RoundTrip(req)
}

func (r *caRotation) closeIdle() {
	r.mu.RLock()
	c := r.client
	r.mu.RUnlock()
	c.CloseIdleConnections()
}

// current returns the client to use, after re-reading the file if the last check is too old.
func (r *caRotation) current() *upstream.Client {
	r.mu.RLock()
	c, fresh := r.client, r.now().Sub(r.checked) < caRefreshEvery
	r.mu.RUnlock()
	if fresh {
		return c
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.now().Sub(r.checked) < caRefreshEvery { // another request checked meanwhile
		return r.client
	}
	r.checked = r.now() // once per period, even if the reload fails
	data, err := os.ReadFile(r.file)
	switch {
	case err != nil:
		r.logger().Warn().Err(err).Msg("kubernetes API server CA bundle not re-read; the roots in use stay")
		return r.client
	case len(data) == 0 || bytes.Equal(data, r.data):
		return r.client
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		r.logger().Warn().Str("file", r.file).Msg("kubernetes API server CA bundle has no certificate; the roots in use stay")
		return r.client
	}
	o := r.opts
	o.TLS = o.TLS.Clone()
	o.TLS.RootCAs = pool
	old := r.client
	r.client, r.data = upstream.New(r.base, o), data
	old.Close()
	r.logger().Info().Str("file", r.file).Msg("kubernetes API server CA bundle changed; new connections verify with it")
	return r.client
}

func (r *caRotation) logger() *zerolog.Logger {
	if r.log == nil {
		nop := zerolog.Nop()
		return &nop
	}
	return r.log
}
