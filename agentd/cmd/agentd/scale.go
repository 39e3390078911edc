package main

import (
	"flag"
	"time"

	"github.com/qkas/qkas/quic"
)

// scaleOptions are the flags that keep an agent cheap for a kasd holding tens of thousands of
// them (docs/scale.md).
type scaleOptions struct {
	keepAlive     time.Duration // --keep-alive-period
	idleTimeout   time.Duration // --idle-timeout
	receiveBuffer int           // --udp-receive-buffer
	sendBuffer    int           // --udp-send-buffer
	gro           bool          // --udp-gro
}

func (s *scaleOptions) register(fs *flag.FlagSet) {
	fs.DurationVar(&s.keepAlive, "keep-alive-period", quic.DefaultAgentKeepAlivePeriod,
		"QUIC keep-alive period of the connections to kasd: one PING and its ACK per period per idle connection, for kasd to keep (and NATs to keep open); after a period plus 2s without a packet the agent probes kasd, which a restarted kasd answers with a stateless reset")
	fs.DurationVar(&s.idleTimeout, "idle-timeout", quic.DefaultAgentMaxIdleTimeout,
		"QUIC idle timeout of the connections to kasd (the smaller of the agent's and kasd's applies): a kasd silent this long is dead; must exceed --keep-alive-period")
	fs.IntVar(&s.receiveBuffer, "udp-receive-buffer", quic.DefaultSocketBuffer,
		"UDP receive buffer (bytes) of the agent's socket: SO_RCVBUFFORCE when permitted, else up to net.core.rmem_max; exported as agentd_udp_receive_buffer_bytes (negative: the system default)")
	fs.IntVar(&s.sendBuffer, "udp-send-buffer", quic.DefaultSocketBuffer,
		"UDP send buffer (bytes) of the agent's socket: SO_SNDBUFFORCE when permitted, else up to net.core.wmem_max (agentd_udp_send_buffer_bytes)")
	fs.BoolVar(&s.gro, "udp-gro", true,
		"receive coalesced datagrams (UDP_GRO, Linux 5.0+): kasd's run of full-size packets (a request body, an upload) is read in one system call and split again, which cuts the receive cost of bulk transfers; agentd_udp_gro says whether the kernel accepted")
}

func (s *scaleOptions) quic() quic.Config {
	return quic.Config{
		KeepAlivePeriod:     s.keepAlive,
		MaxIdleTimeout:      s.idleTimeout,
		SocketReceiveBuffer: s.receiveBuffer,
		SocketSendBuffer:    s.sendBuffer,
		NoUDPGRO:            !s.gro,
	}
}
