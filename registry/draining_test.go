package registry

import (
	"testing"
	"time"
)

// SetDraining re-publishes the instance key with the draining mark: other instances see it
// in their view (for placement), and what the instance holds is unchanged.
func TestSetDrainingIsPublished(t *testing.T) {
	e := startEtcd(t)
	ra := newTestRegistry(t, e, "kas-a", 2*time.Second)
	rb := newTestRegistry(t, e, "kas-b", 2*time.Second)
	ra.SetAgentConnections("agent", 1)
	draining := func(r *Registry, id string) (mark, found bool) {
		for _, in := range r.Instances() {
			if in.ID == id {
				return in.Draining, true
			}
		}
		return false, false
	}
	waitView(t, rb.Registry, convergeTimeout, "kas-a listed", func() bool {
		_, found := draining(rb.Registry, "kas-a")
		return found && len(rb.Holders("agent")) == 1
	})
	if mark, _ := draining(rb.Registry, "kas-a"); mark {
		t.Fatal("kas-a draining before SetDraining")
	}

	ra.SetDraining()
	ra.SetDraining() // idempotent
	waitView(t, rb.Registry, convergeTimeout, "kas-a draining", func() bool {
		mark, _ := draining(rb.Registry, "kas-a")
		return mark
	})
	if !ra.Self().Draining {
		t.Error("Self() does not say draining")
	}
	if mark, _ := draining(rb.Registry, "kas-b"); mark {
		t.Error("kas-b marked draining")
	}
	if hs := rb.Holders("agent"); len(hs) != 1 || !hs[0].Instance.Draining || hs[0].Connections != 1 {
		t.Errorf("holders of agent after the drain mark: %s", fmtHolders(hs))
	}
	if l := rb.Load(); l.Connections["kas-a"] != 1 {
		t.Errorf("Load after the drain mark: %+v", l)
	}
}
