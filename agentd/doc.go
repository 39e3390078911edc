// Package agentd is the in-cluster agent: it dials out to kasd over QUIC, authenticates with its
// agent token, and serves each kasd-opened stream as one HTTP request to one of the services it was
// configured with. Nothing in the cluster listens for kasd; no cluster credential leaves the agent.
//
// # Goroutines and ownership
//
//   - Agent.Run owns one goroutine per connection slot (Config.Connections). A slot dials, serves
//     the connection until it ends or kasd sends GoAway, then reconnects with backoff and jitter,
//     forever, until Run's context ends.
//   - Each live connection owns an http.Server whose listener yields the connection's accepted
//     streams; the http.Server owns one goroutine per stream (one request). A connection that got
//     GoAway is drained by its slot (in-flight requests finish, bounded by Config.DrainTimeout)
//     while a new connection is already being dialled.
//   - http.Server.Shutdown does not wait for upgraded (hijacked) streams, so the connection
//     tracks its handlers itself: drain lets upgraded streams run for the rest of
//     Config.DrainTimeout, then closes the connection under them and waits for their handlers.
//   - The request-body writer of each GitLab request (GitLabRoundTripper) is owned by the Agent;
//     once Run is ending no new one starts (the request fails with shutting_down). A writer
//     ends when its body ends or fails, or a write to its stream fails.
//   - Run returns only after every goroutine above has returned, request-body writers included.
//
// # Streams
//
// A stream starts with an api.Request frame. The agent checks it (kind, service, deadline) and
// answers an api.Result: OK, or a typed refusal such as service_unknown, after which the stream is
// closed. After OK the stream carries one HTTP/1.1 exchange, served by net/http and proxied by an
// httputil.ReverseProxy to the service with a pooled http.Transport sized by
// Config.MaxIdleConnsPerService, so a busy agent does not re-dial its services.
//
// The agent exposes only the services it was configured with, and it removes Authorization and
// Impersonate-* headers a caller might have sent; such headers are only ever set from the
// request's authenticated metadata.
package agentd
