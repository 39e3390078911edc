package main

import (
	"net"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// The TCP agent listener takes the UDP listener's port number by default, an address of its own
// with --agent-listen-tcp, and none with "off".
func TestListenAgentTCP(t *testing.T) {
	cert, _, err := quic.DevCertificate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := quic.ServerTLSConfig(cert, api.ALPNAgent)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	log := zerolog.Nop()
	port := udp.LocalAddr().(*net.UDPAddr).Port

	ln, err := listenAgentTCP(&options{agentListen: udp.LocalAddr().String()}, udp.LocalAddr(), tlsConf, quic.Config{}, &log)
	if err != nil {
		t.Fatal(err)
	}
	if ln == nil {
		t.Skipf("TCP port %d is taken by another process", port)
	}
	if got := ln.Addr().(*net.TCPAddr).Port; got != port {
		t.Errorf("TCP agent listener on port %d, want the UDP listener's %d", got, port)
	}
	ln.Close()

	ln, err = listenAgentTCP(&options{agentListen: "127.0.0.1:0", agentListenTCP: "127.0.0.1:0"}, udp.LocalAddr(), tlsConf, quic.Config{}, &log)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	ln, err = listenAgentTCP(&options{agentListen: "127.0.0.1:0", agentListenTCP: "off"}, udp.LocalAddr(), tlsConf, quic.Config{}, &log)
	if err != nil || ln != nil {
		t.Fatalf("off: %v, %v", ln, err)
	}

	// The default port taken by something else: kasd runs without the TCP listener.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	udp2, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: taken.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Skipf("UDP port of the taken TCP port is busy: %v", err)
	}
	defer udp2.Close()
	ln, err = listenAgentTCP(&options{agentListen: udp2.LocalAddr().String()}, udp2.LocalAddr(), tlsConf, quic.Config{}, &log)
	if err != nil || ln != nil {
		t.Fatalf("taken default port: %v, %v; want no listener and no error", ln, err)
	}
	// An explicit address that is taken is an error.
	if _, err := listenAgentTCP(&options{agentListen: "127.0.0.1:0", agentListenTCP: taken.Addr().String()}, udp.LocalAddr(), tlsConf, quic.Config{}, &log); err == nil {
		t.Fatal("explicit --agent-listen-tcp on a taken port: no error")
	}
}
