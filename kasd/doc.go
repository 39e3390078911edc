// Package kasd is the server side of qkas: it accepts agent connections over QUIC, serves the
// client HTTP API, and proxies each client request to an agent on a new QUIC stream.
//
// # Ownership
//
// A Server is handed its listeners (ServeAgents for agents; Handler is mounted by the caller on its
// own http.Server), as tailscale's derp server is handed connections. It owns one goroutine per
// agent connection (handshake, then the control-stream reader) and one writer goroutine per
// proxied request that has a body. Close closes every agent connection and waits for all of them;
// Shutdown first sends GoAway on every control stream, waits for in-flight requests (bounded by
// its context), then closes.
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
// Every limit a peer can hit is named in Config and counted in kasd_limit_rejections_total{reason}:
// agent connections in total (max_agent_connections) and per agent (max_connections_per_agent),
// in-flight requests per agent (max_inflight_per_agent), the agent handshake time
// (handshake_timeout), the time to a response header (response_header_timeout) and the time a
// request waits for its agent (route_timeout).
package kasd
