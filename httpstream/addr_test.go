package httpstream

import (
	"net"
	"testing"
)

// TestRemoteAddrString: the remote address of a connection's streams is formatted once, not
// once per request (three allocations each), and a different address is never answered with
// the string of the last one.
func TestRemoteAddrString(t *testing.T) {
	a := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443}
	b := &net.UDPAddr{IP: net.ParseIP("fd00::2"), Port: 8443}
	if got := remoteAddrString(a); got != "10.0.0.1:443" {
		t.Fatalf("first call: %q", got)
	}
	if allocs := testing.AllocsPerRun(100, func() { remoteAddrString(a) }); allocs != 0 {
		t.Errorf("the same address again: %v allocations, want 0", allocs)
	}
	for i, c := range []struct {
		addr net.Addr
		want string
	}{
		{b, "[fd00::2]:8443"},
		{a, "10.0.0.1:443"},
		{&net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 444}, "10.0.0.1:444"},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 3), Port: 1}, "10.0.0.3:1"},
		{a, "10.0.0.1:443"},
	} {
		if got := remoteAddrString(c.addr); got != c.want {
			t.Errorf("call %d: %q, want %q", i, got, c.want)
		}
	}
}
