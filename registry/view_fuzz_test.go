package registry

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// FuzzViewApply feeds the watched view keys and values as etcd would deliver them (anyone with
// etcd access can write under the prefix): undecodable values are ignored, the view's counts
// stay consistent, and what the publisher writes reads back.
func FuzzViewApply(f *testing.F) {
	cfg := Config{Prefix: "/qkas/", FleetID: "f1"}
	inst, _ := json.Marshal(Instance{ID: "k1", PeerAddr: "10.0.0.1:8152", APIAddr: "10.0.0.1:8151", Version: "v1"})
	agent, _ := json.Marshal(agentValue{Connections: 2})
	f.Add(cfg.instanceKey("k1"), inst, false, cfg.agentKey("demo", "k1"), agent, false)
	f.Add(cfg.agentKey("a/b", "k2"), agent, false, cfg.agentKey("a/b", "k2"), []byte(nil), true)
	f.Add(cfg.agentKey("demo", "k1"), []byte(`{"connections":"2"}`), false, cfg.instanceKey("k1"), []byte(`{`), false)
	f.Add("/qkas/fleets/f1/agents//k1", agent, false, "/qkas/fleets/f1/instances/a/b", inst, false)
	f.Add("/qkas/fleets/f2/agents/demo/k1", agent, false, "/qkas/agents/demo/k1", agent, false) // another fleet, the old layout
	f.Add("/other/x", []byte("x"), false, cfg.agentKey("demo", "k1"), []byte(`{"connections":-1}`), false)
	f.Fuzz(func(t *testing.T, k1 string, v1 []byte, d1 bool, k2 string, v2 []byte, d2 bool) {
		r := &Registry{cfg: cfg, log: zerolog.Nop()}
		v := newView()
		for _, op := range []struct {
			key   string
			value []byte
			del   bool
		}{{k1, v1, d1}, {k2, v2, d2}, {k1, nil, true}, {k2, v2, d2}} {
			v.apply(r, op.key, op.value, op.del)
			n := 0
			for a, hs := range v.agents {
				if len(hs) == 0 {
					t.Fatalf("agent %q kept with no holders", a)
				}
				for i, h := range hs {
					if id := h.instance; id == "" || strings.Contains(id, "/") {
						t.Fatalf("agent %q held by bad instance id %q", a, id)
					}
					if i > 0 && hs[i-1].instance >= h.instance {
						t.Fatalf("agent %q holders not strictly ordered: %q, %q", a, hs[i-1].instance, h.instance)
					}
				}
				n += len(hs)
			}
			if n != v.agentKeys {
				t.Fatalf("agentKeys = %d, %d holder entries", v.agentKeys, n)
			}
			for id, in := range v.instances {
				if in.ID != id || id == "" || strings.Contains(id, "/") {
					t.Fatalf("instance %q stored as %+v", id, in)
				}
			}
		}
		// The writer's form reads back, for the agent and instance of the first key.
		kind, agentID, instanceID := cfg.parseKey(k1)
		if kind != keyAgent {
			return
		}
		if cfg.agentKey(agentID, instanceID) != k1 {
			t.Fatalf("parseKey(%q) = %q %q, which write %q", k1, agentID, instanceID, cfg.agentKey(agentID, instanceID))
		}
		val, _ := json.Marshal(agentValue{Connections: 7})
		v.apply(r, k1, val, false)
		hs := v.holders(agentID, "")
		found := false
		for _, h := range hs {
			found = found || h.Instance.ID == instanceID && h.Connections == 7
		}
		if !found {
			t.Fatalf("wrote %s = %s, holders %+v", k1, val, hs)
		}
	})
}
