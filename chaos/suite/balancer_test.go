package suite

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// TestPickNeverTheExcludedKasd: with every /readyz late (a saturated machine), the balancer
// still keeps requests off the kasd the suite took out to kill, as long as another may take
// them; with every kasd out of rotation and none taken out it spreads over all of them.
func TestPickNeverTheExcludedKasd(t *testing.T) {
	b := &balancer{f: &fleet{kasd: make([]*kasdNode, 3)}}
	b.ready = make([]atomic.Bool, 3)
	b.excluded = make([]atomic.Bool, 3)
	b.excluded[2].Store(true) // about to be killed; no kasd in rotation
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[int]int{}
	for range 1000 {
		seen[b.pick(rng, 0)]++
	}
	if seen[2] != 0 || seen[0] == 0 || seen[1] == 0 {
		t.Fatalf("picks with no kasd in rotation and kasd 2 taken out: %v", seen)
	}
	if k := b.pick(rng, 1<<0|1<<1); k != 2 {
		t.Fatalf("with the others avoided (their dials failed), pick = %d, want the last one left", k)
	}
	b.excluded[2].Store(false)
	clear(seen)
	for range 1000 {
		seen[b.pick(rng, 0)]++
	}
	if len(seen) != 3 {
		t.Fatalf("picks with none in rotation and none taken out: %v", seen)
	}
}
