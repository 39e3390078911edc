package registry

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

const (
	// DefaultPrefix is the etcd key prefix used when Config.Prefix is empty.
	DefaultPrefix = "/qkas/"
	// DefaultFleetID is the fleet id used when Config.FleetID is empty. kasd never relies on
	// it: without --fleet-id it derives one from the peer secret (auth.DeriveFleetID).
	DefaultFleetID = "default"
	// MaxFleetIDLength bounds a fleet id (it is a key element and travels in peer_hello).
	MaxFleetIDLength = 64
	// DefaultTTL is the lease TTL used when Config.TTL is zero.
	DefaultTTL = 10 * time.Second
	// MinTTL is the smallest accepted lease TTL. etcd itself refuses TTLs below about 1.5 s
	// (1.5 election timeouts) and rounds them up; below 2 s a single slow keep-alive round trip
	// would already lose the lease.
	MinTTL = 2 * time.Second
)

// Config configures a Registry. The zero value is valid and means every default.
type Config struct {
	// Prefix is the etcd key prefix under which every fleet publishes. Default "/qkas/".
	// Must start and end with "/".
	Prefix string
	// FleetID namespaces the keys: this registry publishes and watches only under
	// <Prefix>fleets/<FleetID>/, so fleets sharing one etcd (and one Prefix) never see each
	// other's instances or agents. Default "default". See ValidateFleetID.
	FleetID string
	// TTL is the lease TTL: how long this instance's keys outlive it after a crash or after
	// losing etcd. Default 10s, minimum 2s. etcd leases have whole-second granularity, so the
	// TTL is rounded up to whole seconds.
	TTL time.Duration
	// Now is the clock used to measure the watch lag metric. Default time.Now.
	Now func() time.Time
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.FleetID == "" {
		c.FleetID = DefaultFleetID
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports whether c (after WithDefaults: zero fields mean "default") is usable.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") {
		errs = append(errs, fmt.Errorf("registry: prefix %q must start and end with \"/\"", c.Prefix))
	}
	if err := ValidateFleetID(c.FleetID); err != nil {
		errs = append(errs, err)
	}
	if c.TTL < MinTTL {
		errs = append(errs, fmt.Errorf("registry: TTL %v is below the minimum %v", c.TTL, MinTTL))
	}
	return errors.Join(errs...)
}

// ValidateFleetID reports whether id can name a fleet: 1 to MaxFleetIDLength characters out
// of ASCII letters, digits, '.', '_' and '-', not "." or "..". It is one element of the etcd
// keys, so it may not contain "/".
func ValidateFleetID(id string) error {
	if id == "" || len(id) > MaxFleetIDLength || id == "." || id == ".." {
		return fmt.Errorf("registry: fleet id %q must be 1 to %d characters, not \".\" or \"..\"", id, MaxFleetIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("registry: fleet id %q may only contain letters, digits, '.', '_' and '-'", id)
		}
	}
	return nil
}

// Root is the key prefix of this fleet: <Prefix>fleets/<FleetID>/. Everything the registry
// writes, reads and watches is under it.
func (c Config) Root() string { return c.Prefix + fleetsDir + c.FleetID + "/" }

// ttlSeconds is the lease TTL as etcd wants it: whole seconds, rounded up.
func (c Config) ttlSeconds() int64 {
	return int64((c.TTL + time.Second - 1) / time.Second)
}

// opTimeout bounds every single etcd call the registry's goroutines make, so that an
// unreachable etcd never holds a goroutine for longer than a fraction of the TTL and lease
// loss is noticed in time.
func (c Config) opTimeout() time.Duration {
	return min(max(c.TTL/3, 500*time.Millisecond), 5*time.Second)
}

// Instance is what a kasd instance publishes about itself under <prefix>instances/<id>.
type Instance struct {
	ID       string `json:"id"`
	PeerAddr string `json:"peer_addr"`
	APIAddr  string `json:"api_addr"`
	Version  string `json:"version"`
	// FleetCheck is a value derived from the fleet's peer secret (auth.FleetSecretCheck),
	// published so that a kasd given another secret for the same fleet id can refuse to join
	// before serving anything. Empty: not published (older versions, tests).
	FleetCheck string `json:"fleet_check,omitempty"`
	// Draining is set once the instance began to drain (Registry.SetDraining): it is still
	// live and serves what it holds, but is no place to send agents to. Peers read it from
	// the registry, so those without a link to the instance (which would have heard its
	// GoAway) know too.
	Draining bool `json:"draining,omitempty"`
}

func (i Instance) validate() error {
	if i.ID == "" {
		return errors.New("registry: instance ID is empty")
	}
	if strings.Contains(i.ID, "/") {
		// The instance ID is the last element of agent keys: it must not contain the separator.
		return fmt.Errorf("registry: instance ID %q contains \"/\"", i.ID)
	}
	return nil
}

// agentValue is the JSON value of <prefix>agents/<agent>/<instance>.
type agentValue struct {
	Connections int       `json:"connections"`
	Replicas    []Replica `json:"replicas,omitempty"`
}

// Replica is one agentd process an instance holds connections of. Instances publish them so
// that each learns when a replica whose connection it holds was restarted and reconnected
// elsewhere: the earlier process is gone, and its connections can be retired at once instead of
// swallowing requests until they are judged silent (kasd/liveness.go).
type Replica struct {
	Name    string `json:"name"`    // the replica's name (agentd --replica, the pod name)
	Process string `json:"process"` // random id of the process, new at each start
	// Since is when the instance accepted its first connection of this process, in Unix
	// milliseconds: a later process of the same replica connects after an earlier one died.
	Since int64 `json:"since"`
}

// Holding is what an instance publishes about one agent: how many connections it holds and
// of which processes (sorted by Name, then Process).
type Holding struct {
	Connections int
	Replicas    []Replica
}

func (h Holding) equal(o Holding) bool {
	return h.Connections == o.Connections && slices.Equal(h.Replicas, o.Replicas)
}

const (
	fleetsDir    = "fleets/"
	instancesDir = "instances/"
	agentsDir    = "agents/"
)

func (c Config) instanceKey(id string) string { return c.Root() + instancesDir + id }

func (c Config) agentKey(agentID, instanceID string) string {
	return c.Root() + agentsDir + agentID + "/" + instanceID
}

type keyKind int

const (
	keyUnknown keyKind = iota
	keyInstance
	keyAgent
)

// parseKey splits a key under the fleet's root (Root). Agent IDs may contain "/" (the instance ID, which
// may not, is everything after the last "/").
func (c Config) parseKey(key string) (kind keyKind, agentID, instanceID string) {
	rest, ok := strings.CutPrefix(key, c.Root())
	if !ok {
		return keyUnknown, "", ""
	}
	if id, ok := strings.CutPrefix(rest, instancesDir); ok {
		if id == "" || strings.Contains(id, "/") {
			return keyUnknown, "", ""
		}
		return keyInstance, "", id
	}
	if rest, ok := strings.CutPrefix(rest, agentsDir); ok {
		i := strings.LastIndexByte(rest, '/')
		if i <= 0 || i == len(rest)-1 {
			return keyUnknown, "", ""
		}
		return keyAgent, rest[:i], rest[i+1:]
	}
	return keyUnknown, "", ""
}
