// Package upstream is agentd's HTTP/1.1 client to the services behind it (URL services and
// the Kubernetes API server): a pool of keep-alive connections to one host, used by the
// calling goroutine only.
//
// Unlike http.Transport, which hands every request to a writer goroutine and every response
// back from a reader goroutine of the connection (and, over HTTP/2, every response through the
// connection's single reader goroutine and its framing), a request without a body is written
// and its response read by the goroutine that called RoundTrip, the one serving the stream: on
// the agent's hot path that saves three goroutine handoffs (and, on a busy machine, as many
// thread wake-ups) per request. A request with a body is written by a goroutine of its own
// exchange while the caller reads the response, as http.Transport's writeLoop does: a service
// may answer before it has read the body (a 413 or 401 to a large upload, which it then stops
// reading) or answer while it reads it (full duplex), and a client may wait for part of the
// answer before it sends more body. Responses are parsed by net/http (http.ReadResponse);
// requests are encoded by Request.Write, except the head of a request without a body, which
// writeHead writes byte for byte as Request.Write would but without fmt (FuzzWriteHead holds
// the two equal; anything it does not cover goes to Request.Write).
//
// # Invariants
//
//   - Goroutines: none for a request without a body. A request with a body has one body
//     writer (Request.Write: head, body, framing, trailers), owned by its exchange and always
//     waited for by it: by RoundTrip when it returns an error or a 101 (a 101's connection is
//     the caller's only once the body is written), else when the response body ends (EOF or
//     Close). A writer that has not finished by then is stopped: its connection is closed and
//     the request body closed (as a RoundTripper may), then waited for; a writer blocked in a
//     Read of the request body that Close does not interrupt is waited for until that Read
//     returns (before the writer goroutine, that Read blocked RoundTrip itself). The request's
//     context ending interrupts the exchange through a connection deadline
//     (context.AfterFunc), so RoundTrip, a body's Read and a body writer's write to the
//     connection return once the context is done.
//   - Connections: a connection is in the idle pool or owned by exactly one exchange. It goes
//     back to the pool only when its response body was read to EOF, the request and response
//     allowed keep-alive, the request's context did not end, nothing past the response's end
//     is buffered (a service that sends more than its framing says, such as a body on a 204 or
//     a HEAD answer: read as the next request's response, those bytes would hand it another
//     client's answer) and, for a request with a body,
//     the body writer finished without error (waited for at most 50ms after the response's
//     EOF); any other end closes it. A body writer that fails other than on the connection
//     (the request body's Read failed, or it was shorter than its Content-Length) closes the
//     connection at once, since the service would wait for the rest; a failed write to the
//     connection leaves the response, which the service may have sent before it stopped
//     reading, to be read. At most Options.MaxIdle connections are kept; an idle one older
//     than IdleTimeout is closed.
//   - Reuse and retry: an idle connection is checked before reuse with a non-blocking peek
//     (a system call): one the service closed (or that holds unexpected bytes) is discarded.
//     A request without a body skips the peek on a connection used within the last second,
//     unless that connection's last response had no body by its framing (HEAD, 204, 304,
//     Content-Length: 0): a service that sends one anyway may send it just after the head.
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
//     When no response head could be read after the request's write failed, the error is the
//     write's (the request body's, or the connection's), not the read's.
//   - Upgrades: a 101 response's Body is an io.ReadWriteCloser over the connection, which is
//     then the caller's; for a request with a body, RoundTrip returns it once the body is
//     written.
package upstream
