// Package upstream is agentd's HTTP/1.1 client to the services behind it (URL services and
// the Kubernetes API server): a pool of keep-alive connections to one host, used by the
// calling goroutine only.
//
// Unlike http.Transport, which hands every request to a writer goroutine and every response
// back from a reader goroutine of the connection (and, over HTTP/2, every response through the
// connection's single reader goroutine and its framing), a request here is written and its
// response read by the goroutine that called RoundTrip, the one serving the stream: on the
// agent's hot path that saves three goroutine handoffs (and, on a busy machine, as many thread
// wake-ups) per request. Responses are parsed by net/http (http.ReadResponse); requests are
// encoded by Request.Write, except the head of a request without a body, which writeHead
// writes byte for byte as Request.Write would but without fmt (FuzzWriteHead holds the two
// equal; anything it does not cover goes to Request.Write).
//
// # Invariants
//
//   - Goroutines: none. A Client starts no goroutine; the request's context ending interrupts
//     the exchange through a connection deadline (context.AfterFunc), so RoundTrip and a
//     body's Read return once the context is done.
//   - Connections: a connection is in the idle pool or owned by exactly one exchange. It goes
//     back to the pool only when its response body was read to EOF, the request and response
//     allowed keep-alive and the request's context did not end; any other end closes it. At
//     most Options.MaxIdle connections are kept; an idle one older than IdleTimeout is closed.
//   - Reuse and retry: an idle connection is checked before reuse with a non-blocking peek
//     (a system call): one the service closed (or that holds unexpected bytes) is discarded.
//     A request without a body skips the peek on a connection used within the last second.
//     A request without a body that fails on a reused connection before any response byte is
//     retried once on a new connection (the service closed it as we reused it); nothing else
//     is retried, so a request with a body is only ever sent on a connection that passed the
//     peek.
//   - TLS: with an https URL every connection is verified as Options.TLS says (the roots, the
//     server name, defaulting to the URL's host); NextProtos is http/1.1 only.
//   - Limits: a response head over Options.MaxHead fails with ErrResponseHeadTooLarge without
//     being read whole; a dial and its TLS handshake are bounded by Options.DialTimeout.
//   - Errors: a failure to reach the service is returned as an error whose text is PublicCause
//     (the kind of failure, never an address) and whose Unwrap is the full error, for logs.
//   - Upgrades: a 101 response's Body is an io.ReadWriteCloser over the connection, which is
//     then the caller's.
package upstream
