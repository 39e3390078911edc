// Package httpserve builds the daemons' HTTP servers (kasd's client API and observability port,
// agentd's observability port and GitLab proxy) with a limit on everything a client controls, so
// that the mains only wire flags to it:
//
//   - ReadHeaderTimeout: how long a client may take to send a request's header (also the TLS
//     handshake). Counted as reason "read_header_timeout" when it fires.
//   - IdleTimeout: how long a keep-alive connection may sit between requests. Counted as
//     "idle_timeout" when the server closes an idle connection for it.
//   - MaxHeaderBytes: the size of a request header; larger ones get 431. Counted as
//     "max_header_bytes" (HTTP/1.1 over plain TCP only: over TLS the refusal is encrypted
//     before this package sees it; HTTP/2 refuses inside its own framing).
//   - MaxConnections: open connections. The excess is held, not served, until a connection
//     closes (one accepted connection waits, the rest stay in the kernel's listen backlog), so a
//     burst is absorbed and a flood costs one file descriptor beyond the cap. Counted as
//     "max_connections" for every connection that had to wait.
//
// Counts go to <namespace>_http_limit_hits_total{server,reason}, open connections to
// <namespace>_http_connections{server}.
//
// Shutdown is http.Server's without its keep-alive race: it closes the listeners, then closes
// each HTTP/1.1 connection only once it is idle and quiet (nothing arrived since its last
// response, nothing waiting in its socket), so a request a client sent on a keep-alive
// connection just before is served, not cut; HTTP/2 and whatever remains when its context ends
// go to http.Server.Shutdown. kasd's drain relies on it (docs/faults.md).
//
// Ownership: Server.Serve runs on the caller's goroutine and returns when the listener closes
// (nil after Shutdown or Close). The listener wrapper starts no goroutine; closing it releases an
// Accept waiting for a connection slot. Shutdown runs on the caller's goroutine; Close is
// http.Server's.
//
// DebugHandler serves net/http/pprof; the mains serve it only when asked (--pprof), on its own
// listener that defaults to loopback.
package httpserve
