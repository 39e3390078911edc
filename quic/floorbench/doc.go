//go:build linux

// Command floorbench measures the floor cost of qkas's transport: one QUIC bidirectional
// stream per request, a small request (100 bytes, then FIN) answered by a 1 KiB response
// (then FIN), over one connection, with qkas's QUIC settings (quic.Config.QUICConfig).
//
// One run reports, for the quic-go the binary was built with:
//
//   - c1_*: latency of sequential requests (concurrency 1): p50, p99, p99.9, max, and the
//     process's CPU per request;
//   - tcp_*: the same exchange over one TCP connection, so that "added latency" is
//     c1 minus tcp, measured in the same run;
//   - load_*: CPU per request at concurrency 64 (getrusage of the whole process, which runs
//     both ends: the cost of a request on kasd plus the agent), and requests per second;
//   - *_dg: UDP datagrams per request, counted at sendmsg by both ends (c2s, s2c, total;
//     a GSO send counts each segment).
//
// It builds its quic-go transports the way quic.Listener and quic.Dialer do (one
// quicgo.Transport per UDP socket, cfg.QUICConfig(), cfg.StatelessResetKey), but on sockets
// it wraps to count datagrams, and with quic-go fields that quic.Config does not have yet
// (-ack-delay sets quicgo.Config.MaxAckDelay, which only the patched quic-go in
// third_party/quic-go has).
//
// Loss mode: -server-netns and -client-netns open the two ends' sockets in two network
// namespaces (see loss.sh, which joins them by veth and has nftables drop 1% of the packets
// each namespace receives). -handler-delay makes the server wait before answering, as a
// backend would.
// compare.sh runs upstream and patched quic-go builds interleaved, for a same-run comparison.
//
// # Goroutines
//
// Run owns everything: the server's accept loops and stream handlers are waited for before
// Run returns; the load phase's workers are waited for before it reports.
package main
