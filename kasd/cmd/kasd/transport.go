package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/quic"
)

// listenAgentTCP opens the listener for agents whose UDP is blocked (QUIC carried over
// TLS/TCP, docs/transport.md): --agent-listen-tcp, or by default the host of --agent-listen
// with the port number its UDP socket got, so that one firewall rule per protocol on one
// port number covers both. "off" returns nil. When --agent-listen asked for port 0 and that
// number is taken on TCP, any free TCP port is used (tests); when the default port is taken
// otherwise, kasd runs without the TCP listener and says so (an explicit --agent-listen-tcp
// that cannot be opened is an error).
func listenAgentTCP(o *options, udp net.Addr, tlsConf *tls.Config, cfg quic.Config, log *zerolog.Logger) (*quic.TCPListener, error) {
	switch o.agentListenTCP {
	case "off":
		return nil, nil
	case "":
	default:
		return quic.ListenTCP(o.agentListenTCP, tlsConf, cfg)
	}
	host, port, err := net.SplitHostPort(o.agentListen)
	if err != nil {
		return nil, err
	}
	ua, ok := udp.(*net.UDPAddr)
	if !ok {
		return nil, fmt.Errorf("agent listener address %v is not UDP", udp)
	}
	ln, err := quic.ListenTCP(net.JoinHostPort(host, strconv.Itoa(ua.Port)), tlsConf, cfg)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		if port == "0" {
			return quic.ListenTCP(net.JoinHostPort(host, "0"), tlsConf, cfg)
		}
		log.Warn().Err(err).Msg("the TCP port of --agent-listen is taken: agents whose UDP is blocked cannot fall back to TCP; set --agent-listen-tcp")
		return nil, nil
	}
	return ln, err
}
