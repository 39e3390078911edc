package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestTCPIsFreeAndBelowTheEphemeralRange(t *testing.T) {
	for range 20 {
		addr := TCP(t)
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if p, _ := strconv.Atoi(port); p < rangeLow || p > rangeHigh {
			t.Fatalf("port %d outside [%d, %d]", p, rangeLow, rangeHigh)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s was not free: %v", addr, err)
		}
		ln.Close()
	}
}
