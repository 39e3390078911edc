// Package freeport gives tests a loopback TCP address to pass to a daemon's listen flags.
//
// A port taken with net.Listen("tcp", "127.0.0.1:0") and closed again comes from the kernel's
// ephemeral range, which every outgoing connection of every test running at the same time
// draws from too: between the close and the daemon's bind, one of them can take it ("bind:
// address already in use", seen in CI). The ports here are below the ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), which the kernel never hands out by
// itself, so only another explicit bind can take one.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
)

// Range is where TCP looks for a port: under the default ephemeral range.
const (
	rangeLow  = 20000
	rangeHigh = 32767
)

// TCP returns a loopback address ("127.0.0.1:port") that was free a moment ago, from below the
// ephemeral port range.
func TCP(t testing.TB) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", rangeLow+rand.IntN(rangeHigh-rangeLow+1))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: try another
		}
		ln.Close()
		return addr
	}
	t.Fatal("freeport: no free port below the ephemeral range after 100 tries")
	return ""
}
