// Package agentd is the in-cluster agent: it dials out to kasd over QUIC, authenticates with its
// agent token, and serves each kasd-opened stream as one HTTP request to one of the services it was
// configured with. Nothing in the cluster listens for kasd; no cluster credential leaves the agent.
//
// # Goroutines and ownership
//
//   - Agent.Run owns one goroutine per connection slot (Config.Connections). A slot dials, serves
//     the connection until it ends or kasd sends GoAway, then reconnects with full-jitter
//     backoff that honours kasd's retry time and waits long after a refused token
//     (reconnectDelay, docs/scale.md), forever, until Run's context ends.
//   - Each live connection owns a goroutine that accepts the streams kasd opens, and one goroutine
//     per stream (one request), tracked so that drain can wait for them. A connection that got
//     GoAway is drained by its slot — make before break: the replacement connection is dialled
//     at once while the old one stops taking streams (later ones are reset as refused, which
//     kasd retries elsewhere) and its requests in flight, upgraded ones included, finish within
//     Config.DrainTimeout; then it is closed and its goroutines waited for. After the GoAway
//     of a draining kasd (no Prefer) kasd's own grace bounds them instead: kasd waits for them
//     and closes the connection at the end of its --shutdown-grace, so the agent lets them run
//     until then, and applies DrainTimeout only from when Run's context ends (drainForKasd).
//   - In auto transport mode, Run owns one more goroutine while it runs: the QUIC probe
//     (transport.go), which while the agent is on TCP tries a QUIC handshake every probe
//     interval and, when one completes, makes each TCP connection re-dial make before break.
//   - The request-body writer of each GitLab request (GitLabRoundTripper) is owned by the Agent;
//     once Run is ending no new one starts (the request fails with shutting_down). A writer
//     ends when its body ends or fails, or a write to its stream fails.
//   - A reload of the services (Agent.ReloadServices, reload.go) makes every slot re-announce
//     them, make before break: the slot dials a connection with the new Hello while the old one
//     serves, puts it in the slot, then drains the old one in a goroutine added to Run's group,
//     as after GoAway. WatchConfig (SIGHUP, config file changes) runs in a goroutine its caller
//     owns.
//   - Run returns only after every goroutine above has returned, request-body writers included.
//
// # Services and reloads
//
// The services are an immutable set behind an atomic pointer. A stream takes the set once when
// it starts and uses it to its end, so a reload never removes a service from under a request;
// ReloadServices validates the new list (a bad one keeps the old set, logged and counted in
// agentd_config_reloads_total{result="error"}), reuses the *service (and its connection pool)
// of every unchanged URL, and swaps the set.
//
// # Connect errors
//
// Every failed connect attempt is classified in one place (classifyConnect, connerr.go) by error
// type (x509, tls, net, syscall, quic-go, api), never by message, into a stable ConnectCode that
// is the error_code of the warn line (with a hint of what to check) and the code label of
// agentd_connect_failures_total.
//
// # Streams
//
// A stream starts with an api.Request head (package httpstream reads it, bounded by
// Config.RequestHeaderTimeout). The agent checks it (kind, service, deadline) and either refuses
// it with a typed error frame (service_unknown, deadline_exceeded, ...) or serves it: the
// service's handler gets an *http.Request whose context ends with the stream and an
// httpstream.ResponseWriter. URL services are proxied by a small proxy over internal/upstream, a pooled
// HTTP/1.1 client that writes the request and reads the response in the stream's goroutine
// (no transport goroutines; a request body is written by a goroutine of the request's own,
// waited for before the handler returns, so that the service may answer before or while it
// reads it), sized by Config.MaxIdleConnsPerService; a small response leaves
// with its head and FIN in one stream write. Errors reaching the service are typed error
// frames (service_unavailable naming the service), never HTTP bodies with a forged Qkas-Error.
//
// The agent exposes only the services it was configured with, and it removes Authorization and
// Impersonate-* headers a caller might have sent; such headers are only ever set from the
// request's authenticated metadata.
package agentd
