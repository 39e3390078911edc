// Package httpstream carries one HTTP exchange on one QUIC stream, in every direction of qkas:
// kasd to agent (proxied requests), kasd to kasd (forwarded requests, behind a Forward frame)
// and agent to kasd (GitLab module requests). The byte layout is api/SPEC.md, "Request streams".
//
// Heads are binary frames (api.Request, api.Response), not HTTP/1.1 text: nothing is parsed
// twice, and every size a peer controls is bounded by the api limits before it is allocated.
// Bodies are raw stream bytes ended by FIN (or data frames and a trailers frame when the
// message has trailers). Hop-by-hop headers never travel (HeaderKVs, AddKVs).
//
// # Client side: RoundTrip
//
// RoundTrip writes the request head, and the body when it is small and of known length, in one
// stream write followed by FIN. A larger body is written by one goroutine started through
// Options.Go, so the caller owns it. A Body keeps the first DefaultReplayLimit bytes it read;
// a request whose body is larger or of unknown length is FlagGated: bytes beyond the replay
// buffer wait for the peer's Accepted frame, so a refusal (an Error frame before the response,
// *RemoteError) always leaves the body replayable and the caller may send it elsewhere.
// RoundTrip does not wait for its body writer when the attempt fails: a writer waiting for a
// silent client would hold the request until the client's next byte. The next attempt takes
// over the read in progress (Body serializes its reads), and the caller ends the body with
// Body.Stop once the request is over, which interrupts a read still waiting for the client
// (Body.Interrupt); the writer then ends. The caller's Options.Go owner waits for it.
// The response's body ends the exchange: read to EOF, the stream is closed cleanly; closed
// early, or at the end of the request context, it is reset. Options.Done is called once.
//
// # Server side: ReadRequest, NewRequest, ResponseWriter
//
// The acceptor of a stream reads the head (ReadRequest), refuses it (Refuse) or accepts it
// (Accept, for gated requests), builds the handler's *http.Request (NewRequest: its context
// ends with the stream, but not at this side's FIN on an upgraded stream, whose other direction
// goes on; closing its body stops reading the stream, STOP_SENDING code 0, which ends a Read
// blocked on the peer) and answers through a ResponseWriter, whose Finish sends what is
// pending and FIN after the handler returns. A response of known small size leaves in one
// stream write with FIN. Upgrades switch the stream to raw bytes (Upgrade, or Hijack for
// httputil.ReverseProxy).
//
// Nothing here starts goroutines except RoundTrip's body writer, through Options.Go.
package httpstream
