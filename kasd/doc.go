// Package kasd is the server side of qkas: it accepts agent connections over QUIC, serves the
// client HTTP API, and proxies each client request to an agent on a new QUIC stream.
//
// # Ownership
//
// A Server is handed its listeners (ServeAgents for agents; Handler is mounted by the caller on its
// own http.Server), as tailscale's derp server is handed connections. It owns one goroutine per
// agent connection (handshake, then the control-stream reader), one writer goroutine per proxied
// request that has a body, and, per authenticated agent connection, an http.Server serving the
// GitLab module streams the agent opens, with its handlers. Close closes every agent connection
// and waits for all of these: a connection's goroutine returns only after its module server has
// stopped and its module handlers have returned (their contexts end with the stream, the
// connection, or Close, so a handler waiting on GitLab returns promptly). Shutdown first sends
// GoAway on every control stream, waits for in-flight requests (bounded by its context), then
// closes. Config.Modules (the gitlab.Client) is the caller's to close, after the Server.
//
// # Routing
//
// The agent table maps an agent id to its live connections (one per agent replica). A request is
// sent on a connection that offers the requested service, round-robin across replicas. If the
// agent has no connection, the request waits up to Config.RouteTimeout for one to appear (woken by
// the table, never by polling), then fails with agent_not_connected (503, Retry-After).
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
//     been checked; without a free slot the connection is refused at once with overloaded;
//   - the agent handshake time (Config.HandshakeTimeout, handshake_timeout);
//   - services offered in one Hello (256, max_services);
//   - agent connections in total (Config.MaxAgentConnections, max_agent_connections) and per
//     agent (Config.MaxConnectionsPerAgent, max_connections_per_agent);
//   - in-flight requests per agent (Config.MaxInflightPerAgent, max_inflight_per_agent);
//   - the time a request waits for its agent (Config.RouteTimeout, route_timeout) and to a
//     response header (Config.ResponseHeaderTimeout, response_header_timeout).
package kasd
