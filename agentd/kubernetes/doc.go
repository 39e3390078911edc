// Package kubernetes is agentd's built-in "kubernetes" service: it proxies requests that reach
// the agent as /api/v1/agents/{agent}/proxy/kubernetes/{path...} to the cluster's API server,
// with the agent's own credentials (its ServiceAccount token or the kubeconfig's user) and the
// API server's CA, as configured by a client-go rest.Config.
//
// A *Service is an agentd.ServiceHandler; agentd hands it each request after accepting the
// stream. The Service owns no goroutines of its own: the proxying runs on the calling request's
// goroutine (the stream's, owned by agentd), and an upgraded connection's copy goroutines are
// owned by httputil.ReverseProxy and end with the connection.
// Close closes idle connections to the API server; it does not cut requests in flight.
//
// # Invariants
//
//   - Credentials: the caller's Authorization header never reaches the API server. agentd
//     removes it before ServeService, and outgoingHeader (every request, upgrades included)
//     removes it again with Proxy-Authorization, every Impersonate-* header, the default
//     request-header authentication headers (X-Remote-User, X-Remote-Group, X-Remote-Extra-*)
//     and Forwarded/X-Forwarded-Host/-Proto (X-Forwarded-For stays). Authentication is added by client-go's round trippers
//     from the rest.Config only; they leave a request alone that already carries Authorization,
//     which is why the removal must happen first.
//   - Impersonation: Impersonate-User and one Impersonate-Group per value are set exactly when
//     the stream's api.Request has the "impersonate-user" metadata key (set by kasd from the
//     client JWT's impersonate claim), and never otherwise. A rest.Config that impersonates by
//     itself is refused by New, so the JWT is the only source of impersonation.
//   - Errors: a failure to reach the API server is answered with service_unavailable and a
//     message that says what kind of failure it was (agentd.PublicCause: connection refused,
//     TLS certificate not trusted, ...), never the API server's address or a dial or TLS error
//     text; the full error is logged (warn) with the request id. kasd turns every qkas error on
//     this service into a Kubernetes Status, and refuses requests carrying their own
//     Impersonate-* headers before they reach the agent.
//   - Policy: with a Policy, a request is served only if one of its rules allows the request's
//     path and Kubernetes verb; otherwise it is answered 403 with api.CodeForbidden and a reason
//     and never reaches the API server. agentd applies it to the stream's head before it accepts
//     the stream (CheckRequest, agentd.RequestChecker), so that the denial is a refusal whatever
//     the request's body: after accepted, an error frame is a protocol error (api/SPEC.md). Paths are matched on the decoded path, which is what the
//     API server authorizes; a path with "." or ".." segments or empty segments is denied, so a
//     prefix rule cannot be escaped. Without a Policy everything the agent's identity may do (by
//     the cluster's RBAC) is allowed.
//   - Transports: ordinary requests (everything but upgrades, watches and logs -f included) go
//     over internal/upstream, agentd's HTTP/1.1 client for URL services: the request written
//     and the response read on the stream's own goroutine, up to Config.MaxIdleConns (256)
//     keep-alive connections pooled, an idle connection the API server closed detected before
//     reuse and a bodiless request retried once on a new connection; a watch holds its
//     connection while it runs, as kubectl's does over HTTP/1.1. Around it, everything is
//     client-go's, from rest.Config.TransportConfig as rest.TransportFor builds it (apiTransport):
//     the TLS configuration (transport.TLSConfigFor: the CA, the server name, defaulting to the
//     URL's host, the client certificate, re-read from its files), the dialer (rest.Config.Dial
//     or an exec plugin's) and the wrappers (transport.HTTPWrappersForConfig: a bearer token
//     file re-read as the kubelet rotates it, exec and auth-provider plugins, WrapTransport, the
//     user agent). A CA file is re-read every 5 minutes, as client-go does (caRotation). A
//     rest.Config with its own Transport, or an API server reached through an HTTP proxy,
//     keeps rest.TransportFor (HTTP/2 where offered). Why not rest.TransportFor throughout: its
//     HTTP/2 connection hands every response from its reader goroutine to the request's, a
//     scheduler wake-up each; measured, that cost 200-300 µs per request at one request at a
//     time over a plain service (docs/kubernetes.md). One difference: client-go closes its
//     connections when a client certificate file changes; here new connections use the new
//     certificate, and an idle one is closed after 90 s.
//     Ordinary requests are proxied by forward on the stream's goroutine: one outgoing request
//     built from the incoming head, the response copied with a pooled buffer — no
//     httputil.ReverseProxy, whose request clone and 32 KiB buffer per response were a third of
//     the service's cost (BenchmarkServeService). Requests that ask for a protocol upgrade
//     (exec, attach, port-forward over SPDY/3.1 or WebSocket) go through httputil.ReverseProxy
//     and a second transport built from rest.TLSConfigFor and rest.HTTPWrappersForConfig that
//     only speaks HTTP/1.1; the same credentials and CA apply.
//
// # Long-lived requests and idle limits
//
// Watches and logs -f (responses without a Content-Length) and event streams are flushed read
// by read, and upgrades (exec, attach, port-forward) are passed through by
// httputil.ReverseProxy. A response cut by the API server after its head resets the stream. Nothing in
// this package times a request out: there is
// no write timeout, rest.Config.Timeout is not applied (the transport is used directly, not a
// rest.Client), and no idle timer runs on a stream. What does end long-lived requests:
//
//   - the API server: a watch ends after its --min-request-timeout (default 1800s, randomised
//     up to twice that) or the request's timeoutSeconds; clients such as kubectl and informers
//     re-establish it. The kubelet closes an exec/attach/port-forward stream that has been idle
//     for --streaming-connection-idle-timeout (default 4h).
//   - the tunnel: the QUIC connection between agentd and kasd sends keep-alive PINGs
//     (quic.Config.KeepAlivePeriod, default 2s) and is declared dead after MaxIdleTimeout
//     (default 6s) without any packet; an idle but healthy stream is therefore never cut.
//     When agentd drains a connection, in-flight requests, watches included, get agentd's
//     DrainTimeout (default 30s) to finish before the connection is closed; when kasd drains,
//     they get kasd's --shutdown-grace (default 30s), at whose end kasd closes it.
//   - the client: Qkas-Timeout bounds only the wait for the response head (kasd resets the
//     stream if no head came in time, which ends the request's context here); a watch whose
//     head came runs on. Only an explicit Qkas-Deadline reaches agentd as the stream's
//     deadline (a second after kasd's own, which ends a streaming body cleanly first).
//   - kasd waits ResponseHeaderTimeout (default 60s) for the response header only; the API
//     server sends headers of a watch or a log stream at once.
//
// # Metrics
//
//   - agentd_kubernetes_requests_total{verb,code}: requests by Kubernetes verb (get, list, watch,
//     create, update, patch, delete, deletecollection; lower-case method for non-resource paths;
//     "other" for methods outside HTTP's usual set) and HTTP status (101 for upgrades); a
//     response cut after its head (a watch its client left) counts with the status it was sent.
//   - agentd_kubernetes_policy_denied_total{reason}: requests refused by the Policy; reason is
//     "path", "verb" or "path_not_canonical".
package kubernetes
