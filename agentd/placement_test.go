package agentd

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"testing"
)

// A slot that kasd asked to move for balance (GoAway with Prefer) dials the address last seen
// answering as the preferred instance, wherever the round robin stands; with the preferred
// instance unknown, anything but the instance it leaves; and the instance it leaves only when
// nothing else is left.
func TestMoveTarget(t *testing.T) {
	addrs := []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
	a, err := New(Config{
		KasAddresses: addrs, Token: "t", TLS: &tls.Config{},
		Services: map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	learn := func(addr, inst string) {
		ua, _ := net.ResolveUDPAddr("udp", addr)
		a.learnInstance(target{addr: ua}, inst)
	}
	next := func() string {
		tgt, _, err := a.nextTarget(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		return tgt.String()
	}
	learn(addrs[0], "k1")
	learn(addrs[1], "k2")
	learn(addrs[2], "k3")
	a.beginMove(0, slotMove{avoid: "k1", prefer: "k3"})
	for range 6 {
		if got := next(); got != addrs[2] {
			t.Fatalf("moving k1 → k3 dialled %s, want %s", got, addrs[2])
		}
	}
	if !a.moveAvoids(0, "k1") || a.moveAvoids(0, "k3") || a.moveAvoids(1, "k1") {
		t.Fatal("moveAvoids")
	}
	// The preferred instance refused (it drains, say): after a failed attempt the slot dials
	// anything but the instance it leaves, not the preferred one first again.
	a.dropPreference(0)
	seen := map[string]bool{}
	for range 12 {
		seen[next()] = true
	}
	if seen[addrs[0]] || !seen[addrs[1]] || !seen[addrs[2]] || !a.moveAvoids(0, "k1") {
		t.Fatalf("preference dropped: dialled %v, still avoiding k1 %v", seen, a.moveAvoids(0, "k1"))
	}
	// The preferred instance is not behind any known address: any address but k1's.
	a.beginMove(0, slotMove{avoid: "k1", prefer: "k9"})
	seen = map[string]bool{}
	for range 12 {
		seen[next()] = true
	}
	if seen[addrs[0]] || !seen[addrs[1]] || !seen[addrs[2]] {
		t.Fatalf("moving away from k1 with an unknown preference dialled %v", seen)
	}
	// Only the instance being left: it is still a place to go.
	b, _ := New(Config{KasAddresses: addrs[:1], Token: "t", TLS: &tls.Config{},
		Services: map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}}})
	ua, _ := net.ResolveUDPAddr("udp", addrs[0])
	b.learnInstance(target{addr: ua}, "k1")
	b.beginMove(0, slotMove{avoid: "k1", prefer: "k3"})
	if tgt, _, err := b.nextTarget(context.Background(), 0); err != nil || tgt.String() != addrs[0] {
		t.Fatalf("the only address: %v %v", tgt, err)
	}
	// A draining kasd is dialled only when nothing else is left, and a connection it (or a new
	// process under its instance id) accepts is kept.
	a.beginMove(0, slotMove{avoid: "k2", draining: true})
	seen = map[string]bool{}
	for range 12 {
		seen[next()] = true
	}
	if seen[addrs[1]] || !seen[addrs[0]] || !seen[addrs[2]] || a.moveAvoids(0, "k2") {
		t.Fatalf("draining k2: dialled %v, moveAvoids %v", seen, a.moveAvoids(0, "k2"))
	}
	// The move over, the round robin is back.
	a.endMove(0)
	seen = map[string]bool{}
	for range 12 {
		seen[next()] = true
	}
	if len(seen) != 3 {
		t.Fatalf("after the move: %v", seen)
	}
}
