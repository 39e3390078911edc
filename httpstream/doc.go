// Package httpstream carries one HTTP/1.1 exchange on one QUIC stream, in both directions of
// qkas: kasd to agent (proxied requests), kasd to kasd (forwarded requests, behind a Forward
// frame) and agent to kasd (GitLab module requests).
//
// A stream starts with an api.Request frame, answered by an api.Result frame, followed by the
// HTTP/1.1 request and response, written and parsed by net/http (Request.Write, ReadResponse,
// http.Server). Nothing here parses HTTP by hand.
//
// # Client side: RoundTrip
//
// RoundTrip writes the frame and the request on a stream the caller opened, and returns the
// response once its header has arrived. A request without a body leaves in one stream write.
// A request body is written by a goroutine started through Options.Go, so the caller decides who
// owns and waits for it; with Options.HoldBody the body waits until the first Result has
// arrived, so a refused stream (for example a stale route) can be retried with the body unread.
// The stream ends when the response body is read to EOF (closed cleanly) or closed early or
// the request context ends (reset). Options.Done is called exactly once, when it ends.
//
// # Server side: Listener and Conn
//
// A Listener yields the streams a connection accepts as *Conn, for an http.Server. A Conn's
// first Read consumes the Request frame, passes it to the Listener's Check function and writes
// the Result: OK, or the refusal, after which the stream is closed and the http.Server sees EOF.
// ConnContext puts the *Conn into the request context; FromContext gets it back in the handler.
package httpstream
