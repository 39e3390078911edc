// Package kasd is the server side of qkas: it accepts agent connections over QUIC, serves the
// client HTTP API, and proxies each client request to an agent on a new QUIC stream.
//
// # Ownership
//
// A Server is handed its listeners (ServeAgents for agents, ServePeers for other kasd; Handler is
// mounted by the caller on its own http.Server), as tailscale's derp server is handed
// connections. It owns one goroutine per agent or peer connection (handshake, then the control
// stream), one goroutine accepting the streams an agent opens (GitLab module requests) with one
// goroutine per such stream, one per forwarded-in stream (splice), one body writer per attempt
// of a proxied request with a body (a failed attempt's writer may still wait for the client's
// next bytes: it ends with the request's body, which the handler ends before it returns,
// trackUpload), one sampler noting which agent connections went silent, and, in a fleet, one
// rebalancer asking an agent connection at a time to move to the least loaded kasd
// (rebalance.go).
// Close closes every connection and waits for all of these: a stream's context ends with the
// stream, the connection or Close, so a handler waiting on GitLab returns promptly, and a body
// writer still waiting for a client closeUploadWait after Close began is interrupted. BeginDrain
// fails /readyz, refuses new agents and forwarded requests, and sends GoAway to peers and
// agents (they make before break); Shutdown then waits for requests in flight — local,
// forwarded out and forwarded in, each counted from its first byte — bounded by its context,
// then closes. Config.Modules (the gitlab.Client) is the caller's to close, after the Server.
//
// # Fleets
//
// The replicas that share a fleet id (FleetConfig.Registry's, which namespaces the etcd keys)
// and a peer secret are one fleet (fleetid.go). A peer connection starts with peer_hello
// carrying the fleet id and a proof of the secret bound to the fleet id and the TLS session;
// a peer of another fleet, or with another secret, is refused by name (ErrFleetMismatch,
// ErrPeerSecretMismatch), logged at error level and counted in
// kasd_peer_refusals_total{side,reason}. CheckFleetSecret is what a kasd runs before serving,
// to refuse to join a fleet whose running replicas were given another secret.
//
// # Routing
//
// One seam, kasd/route.go: a request is resolved to an ordered list of holders — this kasd's
// connections of the agent that offer the service (round-robin over replicas), then the peers
// the registry says hold it (failed or draining peers last), then connections that went silent
// — and handed to one holder at a time through the holder interface (localHolder,
// peerHolder). retryDecision is the only retry policy: a request refused or lost before it
// reached the agent goes to the next holder for any method while its body is replayable; an
// idempotent request without a body whose stream failed before any response byte is retried
// once; nothing else. With no holder, the request waits up to Config.RouteTimeout, woken by the
// agent table or the registry watch, never by polling, then fails with agent_not_connected
// (503, Retry-After).
//
// # Errors
//
// Every failure is an *api.Error; api.Code.HTTPStatus is the one table that maps codes to HTTP
// statuses, and api.WriteHTTPError writes the JSON body. A client can always tell
// agent_not_connected from service_unknown, service_unavailable, overloaded and
// deadline_exceeded.
//
// # Limits
//
// Every limit a peer can hit is named and counted in kasd_limit_rejections_total{reason}:
//   - agent handshakes not yet authenticated (Config.MaxPendingHandshakes, max_pending_handshakes):
//     a slot is taken before the control stream is accepted and given back once the token has
//     been checked; without a free slot the connection is refused at once with overloaded and
//     a retry time scheduled at the rate kasd admits agents (admission.go, docs/scale.md);
//   - the agent handshake time (Config.HandshakeTimeout, handshake_timeout);
//   - services offered in one Hello (api.MaxServices, 256, max_services);
//   - agent connections in total (Config.MaxAgentConnections, max_agent_connections) and per
//     agent (Config.MaxConnectionsPerAgent, max_connections_per_agent);
//   - in-flight requests per agent (Config.MaxInflightPerAgent, max_inflight_per_agent);
//   - the time a request waits for its agent (Config.RouteTimeout, route_timeout) and to a
//     response header (Config.ResponseHeaderTimeout, response_header_timeout);
//   - what an agent or peer sends back (api/SPEC.md): a response head over api.MaxHeadSize or
//     with more than api.MaxHeaderFields fields (response_head_too_large), more than
//     api.MaxInformational 1xx responses (too_many_informational), anything malformed
//     (protocol_error). Each gets the client a typed 502 naming the agent or peer, and kasd
//     never reads past the limit.
package kasd
