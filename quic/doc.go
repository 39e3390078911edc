// Package quic is qkas's transport over quic-go: one place for QUIC and TLS defaults, a
// Listener and a Dialer that each own one UDP socket (a Dialer with
// Config.SocketPerConnection, one per connection), the development CA, the
// stateless reset key, reconnect backoff, and a net.Conn view of a bidirectional stream.
//
// Import quic-go alongside this package as quicgo:
//
//	import (
//		quicgo "github.com/quic-go/quic-go"
//		"github.com/qkas/qkas/quic"
//	)
//
// # Ownership and goroutines
//
// This package starts no goroutine of its own that outlives a call, with one documented
// exception (the one-shot [Dial]). All long-lived goroutines belong to quic-go:
//
//   - A [Listener] owns one net.PacketConn and one quicgo.Transport. The transport runs a read
//     loop on the socket and one run loop per connection. [Listener.Close] closes the listener,
//     then the transport, then the socket; it returns after the transport's read loop has
//     returned and every connection's run loop has ended (quicgo.Transport.Close destroys the
//     connections it serves and waits for them). Connections closed this way are destroyed
//     WITHOUT a CONNECTION_CLOSE frame: peers notice only through a stateless reset (if the
//     restarted listener has the same [Config.StatelessResetKey]) or their idle timeout. To
//     shut down politely, call CloseWithError([ConnCodeShutdown]) on each connection first.
//   - A [Dialer] owns one net.PacketConn and one quicgo.Transport shared by every connection it
//     dials. [Dialer.Close] has the same semantics as [Listener.Close]: it abruptly destroys
//     every connection still open on it and returns when their goroutines are gone. With
//     [Config.SocketPerConnection] it owns a socket and a transport per connection instead,
//     closed (by a function registered with context.AfterFunc on conn.Context(), as for [Dial])
//     when the connection ends, or a dial fails, or by Close.
//   - [Dial] (one-shot) owns its own socket; quic-go closes its transport when the connection
//     ends, and a function registered with context.AfterFunc on conn.Context() closes the
//     socket. That function runs once, briefly, after the connection ends; the caller owns the
//     connection and must close it (CloseWithError) to release the socket.
//   - A [TCPListener] and a [TCPDialer] carry the same QUIC connections over TLS/TCP where UDP
//     is blocked (tcpframe.go has the layout and the cost). The TCPListener owns its
//     net.Listener, one accept loop and a reader and a writer goroutine per TCP connection,
//     multiplexed into one quicgo.Transport; Close waits for all of them. A TCPDialer makes one
//     TCP connection and one quicgo.Transport per QUIC connection, released when the connection
//     ends; Close ends those still open and waits. Either way, a QUIC connection and its TCP
//     connection end together, and [TransportOf] tells them apart by the remote address.
//
// A *quicgo.Conn returned by Accept or Dial is owned by the caller, who must close it with
// CloseWithError. Its Context ends when the connection ends, for any reason: a local or remote
// close, an idle timeout (a silent peer is dead after [Config.MaxIdleTimeout]), a stateless
// reset, or the owning Listener/Dialer closing.
//
// # Streams
//
// One request is one bidirectional stream. [StreamConn] adapts a stream to net.Conn: Close sends
// FIN and stops reading, CloseWrite only sends FIN, Abort resets both directions with an error
// code. An error on one stream resets that stream only (Stream* codes); a protocol violation
// closes the whole connection (ConnCode* codes).
//
// # Sockets
//
// A Listener and a Dialer size their UDP socket's buffers when they open it
// (Config.SocketReceiveBuffer, SocketSendBuffer; 7 MiB): SO_RCVBUFFORCE/SO_SNDBUFFORCE where
// permitted, else up to the kernel's maximum. SocketBuffers reports what was obtained,
// ReceiveDrops the datagrams the kernel dropped (SO_MEMINFO, or /proc/net/udp on kernels
// before 4.16), and SocketCollector exports
// both. See socket.go and docs/scale.md.
//
// # Limits
//
// Every limit a peer controls is in [Config]: concurrent streams it may open
// (MaxIncomingStreams; unidirectional streams are refused), flow-control windows (memory per
// stream and per connection), handshake time and idle time.
package quic
