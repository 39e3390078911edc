//go:build !linux

package quic

import (
	"errors"
	"net"
)

// Buffer sizing and drop counting are implemented for Linux only (qkas's target); elsewhere
// sockets keep the system's sizes and quic-go's own attempt to raise them.
var (
	receiveOpts = bufferOpts{size: 1}
	sendOpts    = bufferOpts{size: 2}
)

var errUnsupported = errors.New("quic: socket options are only handled on Linux")

func usable(reported int) int { return reported }

func setsockoptInt(uintptr, int, int) error { return errUnsupported }

func getsockoptInt(uintptr, int) (int, error) { return 0, errUnsupported }

// SocketDrops is only implemented on Linux (/proc/net/udp).
func SocketDrops(*net.UDPConn) (uint64, error) { return 0, errUnsupported }
