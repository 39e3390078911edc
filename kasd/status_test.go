package kasd_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
)

// statusFor calls StatusFor with a request carrying tok.
func statusFor(t *testing.T, srv *kasd.Server, tok string, opt ...kasd.StatusOptions) (*kasd.Status, error) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/ui/api/feed", nil)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	var o kasd.StatusOptions
	if len(opt) > 0 {
		o = opt[0]
	}
	return srv.StatusFor(r, o)
}

// TestStatusAgentsScopedByJWT: the status lists this kasd's agents with their connections (QUIC
// statistics included), only those the JWT may reach, and refuses a request without a valid JWT
// as the API does, counting it.
func TestStatusAgentsScopedByJWT(t *testing.T) {
	e := newEnv(t)
	svc := namedService(t, "svc")
	alpha := e.startAgent("alpha", "alpha-0", map[string]string{"prometheus": svc.URL, "web": svc.URL})
	beta := e.startAgent("beta", "beta-0", map[string]string{"web": svc.URL})
	waitConnected(t, alpha, 1)
	waitConnected(t, beta, 1)
	// Traffic on alpha's connections gives quic-go RTT samples.
	for range 4 {
		readAll(t, e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil))
	}

	st, err := statusFor(t, e.server(), e.token(func(c *auth.ClientClaims) { c.Agents = []string{"alpha"} }))
	if err != nil {
		t.Fatal(err)
	}
	if st.Instance.ID != "kas-test" || st.Instance.State != "serving" || st.Instance.Fleet || st.Instance.Lease != "none" {
		t.Errorf("instance = %+v, want kas-test serving, standalone", st.Instance)
	}
	// The instance counts every agent, as kasd_connected_agents does; the list is scoped.
	if st.Instance.Agents != 2 || st.Instance.Connections != 2 {
		t.Errorf("instance counts %d agents, %d connections; want 2, 2", st.Instance.Agents, st.Instance.Connections)
	}
	if len(st.Agents) != 1 || st.Agents[0].ID != "alpha" {
		t.Fatalf("agents = %+v, want alpha only (the JWT allows alpha)", st.Agents)
	}
	a := st.Agents[0]
	if strings.Join(a.Services, ",") != "prometheus,web" {
		t.Errorf("services = %v", a.Services)
	}
	if len(a.Holders) != 1 || a.Holders[0].Instance != "kas-test" || !a.Holders[0].Local || a.Holders[0].Connections != 1 {
		t.Errorf("holders = %+v", a.Holders)
	}
	if len(a.Connections) != 1 {
		t.Fatalf("connections = %+v, want 1", a.Connections)
	}
	for _, c := range a.Connections {
		if c.Transport != "quic" || c.Replica != "alpha-0" || c.Remote == "" || c.Since.IsZero() {
			t.Errorf("connection %+v", c)
		}
		if c.Link.RTTMillis <= 0 || c.Link.PacketsSent == 0 || c.Link.PacketsReceived == 0 {
			t.Errorf("connection %s has no QUIC statistics: %+v", c.ID, c.Link)
		}
		if c.Link.Loss < 0 || c.Link.Loss > 1 {
			t.Errorf("loss %v outside 0..1", c.Link.Loss)
		}
	}

	before := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "unauthenticated"})
	for _, tok := range []string{"", "not-a-jwt"} {
		_, err := statusFor(t, e.server(), tok)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeUnauthenticated {
			t.Errorf("token %q: err = %v, want unauthenticated", tok, err)
		}
	}
	if got := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "unauthenticated"}) - before; got != 2 {
		t.Errorf("unauthenticated status requests counted %v times, want 2", got)
	}
}

// TestStatusRouteFigures: request counts by route and status, and p50/p99 of the route's recent
// requests: nine fast requests and one that the service holds for 300ms.
func TestStatusRouteFigures(t *testing.T) {
	e := newEnv(t)
	svc := namedService(t, "svc")
	a := e.startAgent("alpha", "alpha-0", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	for i := range 10 {
		path := "/api/v1/agents/alpha/proxy/web/x"
		if i == 5 {
			path += "?sleep=300ms"
		}
		if resp := e.do("GET", path, nil); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, readAll(t, resp))
		} else {
			readAll(t, resp)
		}
	}
	readAll(t, e.do("GET", "/api/v1/agents/gamma/proxy/web/x", nil)) // not connected: 503, route none

	st, err := statusFor(t, e.server(), e.token())
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]kasd.RouteStatus{}
	var order []string
	for _, r := range st.Routes {
		routes[r.Route] = r
		order = append(order, r.Route)
	}
	if strings.Join(order, ",") != "local,forwarded,none" {
		t.Fatalf("routes %v, want local,forwarded,none", order)
	}
	local := routes["local"]
	if local.Requests["200"] != 10 {
		t.Errorf("local requests = %v, want 10 × 200", local.Requests)
	}
	if routes["none"].Requests["503"] != 1 {
		t.Errorf("none requests = %v, want 1 × 503", routes["none"].Requests)
	}
	if st.APIErrors["agent_not_connected"] != 1 {
		t.Errorf("api errors = %v, want agent_not_connected 1", st.APIErrors)
	}
	l := local.Latency
	if l.Samples != 10 {
		t.Fatalf("latency samples = %d, want 10", l.Samples)
	}
	if l.P50Millis <= 0 || l.P50Millis >= 150 {
		t.Errorf("p50 = %vms, want the fast requests' (< 150ms)", l.P50Millis)
	}
	// Nearest rank: the 99th percentile of 10 samples is the largest, the 300ms one.
	if l.P99Millis < 300 || l.MaxMillis < 300 || l.P99Millis > l.MaxMillis {
		t.Errorf("p99 = %vms, max = %vms, want >= 300ms", l.P99Millis, l.MaxMillis)
	}
	if st.Routes[1].Latency.Samples != 0 {
		t.Errorf("forwarded latency %+v without forwarded requests", st.Routes[1].Latency)
	}
}

// TestStatusFleetPeersAndDrain: in a fleet, the status lists the peers from the registry with
// the link to each (dialled by the status itself when no request went there yet), agents held
// only by a peer, and a peer that begins to drain shows as draining within 2s.
func TestStatusFleetPeersAndDrain(t *testing.T) {
	f := newFleetEnv(t, 2)
	n0, n1 := f.nodes[0], f.nodes[1]
	svc := namedService(t, "svc")
	f.startAgent("alpha", "alpha-0", svc.URL, []*node{n1}, 1)
	f.waitHolders("alpha", "kas-1")

	st, err := statusFor(t, n0.srv, f.token())
	if err != nil {
		t.Fatal(err)
	}
	if st.Instance.ID != "kas-0" || !st.Instance.Fleet {
		t.Errorf("instance = %+v", st.Instance)
	}
	if len(st.Agents) != 1 || st.Agents[0].ID != "alpha" || len(st.Agents[0].Connections) != 0 ||
		len(st.Agents[0].Holders) != 1 || st.Agents[0].Holders[0].Instance != "kas-1" || st.Agents[0].Holders[0].Local {
		t.Errorf("agents = %+v, want alpha held by kas-1 only", st.Agents)
	}

	// No request was forwarded yet: the status dials the peer, and a later one shows the link.
	var peer kasd.PeerStatus
	waitFor(t, "kas-0's status shows a live link to kas-1 with its RTT", func() bool {
		st, err := statusFor(t, n0.srv, f.token())
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) != 1 {
			return false
		}
		peer = st.Peers[0]
		return peer.Link != nil && peer.Link.RTTMillis > 0
	})
	if peer.ID != "kas-1" || peer.State != "serving" || peer.PeerAddr == "" {
		t.Errorf("peer = %+v, want kas-1 serving", peer)
	}
	st, _ = statusFor(t, n0.srv, f.token())
	if st.Instance.Lease != "held" {
		t.Errorf("lease = %q, want held", st.Instance.Lease)
	}

	n1.srv.BeginDrain()
	start := time.Now()
	waitFor(t, "kas-0 shows kas-1 draining", func() bool {
		st, err := statusFor(t, n0.srv, f.token())
		return err == nil && len(st.Peers) == 1 && st.Peers[0].State == "draining"
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("kas-1's drain took %v to show on kas-0, want < 2s", d)
	}
	// It stays shown while kas-1 drains: past the retry delay after kas-0 closed the drained link,
	// kas-0 dials kas-1 again, and kas-1 refuses the link (shutting_down), which is the drain too,
	// not an unreachable peer.
	// Polled as the web UI polls, about once a second: each poll lands just after the last
	// closed link's retry delay ran out (the poll's own redial closed it again), which showed
	// "serving" at every poll for as long as kas-1 drained (e2e TestWebUI, once in CI).
	for range 3 {
		time.Sleep(time.Second + 20*time.Millisecond)
		st, err := statusFor(t, n0.srv, f.token())
		if err != nil || len(st.Peers) != 1 || st.Peers[0].State != "draining" {
			t.Fatalf("%v after the drain showed: kas-0's view of kas-1 = %+v (err %v), want draining", time.Since(start).Round(time.Millisecond), st.Peers, err)
		}
	}
	self, err := statusFor(t, n1.srv, f.token())
	if err != nil {
		t.Fatal(err)
	}
	if self.Instance.State != "draining" || self.Instance.DrainingSince == nil {
		t.Errorf("kas-1's own status = %+v, want draining with its start", self.Instance)
	}
}

// TestStatusAgentFilterAndLimit: the status lists at most MaxAgents agents (by id), those whose
// id contains the filter and the JWT may reach, and says how many matched.
func TestStatusAgentFilterAndLimit(t *testing.T) {
	e := newEnv(t)
	svc := namedService(t, "svc")
	for _, id := range []string{"alpha", "beta", "gamma"} {
		waitConnected(t, e.startAgent(id, id+"-0", map[string]string{"web": svc.URL}), 1)
	}
	ids := func(st *kasd.Status) string {
		var out []string
		for _, a := range st.Agents {
			out = append(out, a.ID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name    string
		agents  []string // the JWT's agents claim
		opt     kasd.StatusOptions
		want    string
		matched int
	}{
		{"all", []string{auth.AnyAgent}, kasd.StatusOptions{}, "alpha,beta,gamma", 3},
		{"limit", []string{auth.AnyAgent}, kasd.StatusOptions{MaxAgents: 2}, "alpha,beta", 3},
		{"filter", []string{auth.AnyAgent}, kasd.StatusOptions{Filter: "mm"}, "gamma", 1},
		{"filter matches none", []string{auth.AnyAgent}, kasd.StatusOptions{Filter: "zeta"}, "", 0},
		{"scoped and limited", []string{"gamma", "beta"}, kasd.StatusOptions{MaxAgents: 1}, "beta", 2},
		{"scoped and filtered", []string{"alpha"}, kasd.StatusOptions{Filter: "a"}, "alpha", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := statusFor(t, e.server(), e.token(func(c *auth.ClientClaims) { c.Agents = tc.agents }), tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(st); got != tc.want || st.AgentsMatched != tc.matched {
				t.Errorf("agents %q, %d matched; want %q, %d", got, st.AgentsMatched, tc.want, tc.matched)
			}
			if st.Instance.Agents != 3 {
				t.Errorf("instance counts %d agents, want 3 whatever the filter", st.Instance.Agents)
			}
		})
	}
}
