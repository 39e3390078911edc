package agentd

import (
	"context"
	"crypto/tls"
	"net/url"
	"testing"
)

// Agents start at a random kasd address: 300 agents with three addresses put their first
// connection on each address about a third of the time (all of them used to start with the
// first address, so one kasd of three held no connection at all).
func TestFirstAddressIsSpread(t *testing.T) {
	addrs := []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
	count := map[string]int{}
	for range 300 {
		a, err := New(Config{
			KasAddresses: addrs,
			Token:        "t",
			TLS:          &tls.Config{},
			Services:     map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		tgt, n, err := a.nextTarget(context.Background(), 0)
		if err != nil || n != 3 {
			t.Fatalf("nextTarget: %v (%d targets)", err, n)
		}
		count[tgt.String()]++
	}
	for _, addr := range addrs {
		if c := count[addr]; c < 70 || c > 130 {
			t.Errorf("%s was the first address of %d of 300 agents, want about 100: %v", addr, c, count)
		}
	}
}
