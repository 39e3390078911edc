package kasd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// fleetLog is a log sink safe for concurrent writers.
type fleetLog struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *fleetLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *fleetLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startFleetNode starts a kasd in fleetID with peerKey on f's etcd, publishing its peer
// secret check as cmd/kasd does. Its log goes to the returned sink.
func (f *fleetEnv) startFleetNode(id, fleetID string, peerKey []byte) (*node, *fleetLog) {
	t := f.t
	cert, _, err := quic.DevCertificate(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{id: id, promReg: prometheus.NewRegistry()}
	if nd.agentLn, err = quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.peerLn, err = quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNPeer), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.etcd, err = registry.NewClient(registry.ClientConfig{Endpoints: f.etcd.Endpoints()}); err != nil {
		t.Fatal(err)
	}
	logs := &fleetLog{}
	log := zerolog.New(logs).With().Str("node", id).Logger()
	self := registry.Instance{ID: id, PeerAddr: nd.peerLn.Addr().String(), FleetCheck: auth.FleetSecretCheck(peerKey, fleetID)}
	if nd.reg, err = registry.New(nd.etcd, registry.Config{FleetID: fleetID, TTL: f.ttl}, self, log, nd.promReg); err != nil {
		t.Fatal(err)
	}
	nd.srv, err = kasd.New(kasd.Config{
		InstanceID:   id,
		AgentAuth:    kasd.TokenFileAuth{Store: f.store},
		ClientAuth:   &auth.Verifier{Key: f.secret, AllowAnyAgent: true},
		RouteTimeout: time.Second,
		Fleet:        &kasd.FleetConfig{Registry: nd.reg, PeerSecret: peerKey},
		Log:          &log,
		Registerer:   nd.promReg,
	})
	if err != nil {
		t.Fatal(err)
	}
	nd.wg.Go(func() { _ = nd.srv.ServeAgents(context.Background(), nd.agentLn) })
	nd.wg.Go(func() { _ = nd.srv.ServePeers(context.Background(), nd.peerLn) })
	nd.api = httptest.NewServer(nd.srv.Handler())
	f.nodes = append(f.nodes, nd)
	return nd, logs
}

func refusals(t *testing.T, nd *node, side, reason string) float64 {
	return counter(t, nd.promReg, "kasd_peer_refusals_total", map[string]string{"side": side, "reason": reason})
}

// Two fleets on one machine share the embedded etcd (as every kasd started with the defaults
// does): each fleet works across its own replicas, neither sees the other's agents (the same
// agent id in both fleets is two agents), and a kasd of fleet B never dials fleet A's kasd. A
// fleet-B registry entry pointing at fleet A's kasd (a stale or forged key) is refused at the
// handshake with an error that names both fleets, logged and counted on both sides.
func TestFleetsSharingEtcdDoNotJoin(t *testing.T) {
	f := newFleetEnv(t, 0)
	keyA := []byte("fleet-a-peer-secret-fleet-a-peer-secret!")
	keyB := []byte("fleet-b-peer-secret-fleet-b-peer-secret!")
	a0, logA0 := f.startFleetNode("kas-0", "fleet-a", keyA)
	a1, _ := f.startFleetNode("kas-1", "fleet-a", keyA)
	b0, logB0 := f.startFleetNode("kas-0", "fleet-b", keyB) // same instance id, other fleet

	f.startAgent("alpha", "r0", namedService(t, "a-alpha").URL, []*node{a0}, 1)
	f.startAgent("beta", "r0", namedService(t, "b-beta").URL, []*node{b0}, 1)
	waitFor(t, "fleet a sees alpha on kas-0", func() bool { return len(a1.reg.Holders("alpha")) == 1 })
	waitFor(t, "fleet b sees beta", func() bool { return len(b0.reg.Holders("beta")) == 1 })

	// Each fleet works, across its replicas.
	if code, body := f.get(a1, "alpha", "/x"); code != 200 || body != "a-alpha /x" {
		t.Fatalf("fleet a, forwarded: %d %s", code, body)
	}
	if code, body := f.get(b0, "beta", "/x"); code != 200 || body != "b-beta /x" {
		t.Fatalf("fleet b, local: %d %s", code, body)
	}
	// Neither sees the other's agents or instances.
	if hs := b0.reg.Holders("alpha"); len(hs) != 0 {
		t.Fatalf("fleet b sees fleet a's agent: %+v", hs)
	}
	if hs := a1.reg.Holders("beta"); len(hs) != 0 {
		t.Fatalf("fleet a sees fleet b's agent: %+v", hs)
	}
	for _, in := range b0.reg.Instances() {
		if in.PeerAddr != b0.peerLn.Addr().String() {
			t.Fatalf("fleet b lists %+v", in)
		}
	}
	if code, body := f.get(b0, "alpha", "/x"); code != 503 || !strings.Contains(body, "agent_not_connected") {
		t.Fatalf("fleet a's agent through fleet b: %d %s", code, body)
	}
	if n := counter(t, b0.promReg, "kasd_peer_dials_total", nil); n != 0 {
		t.Fatalf("fleet b's kasd dialled %v peers", n)
	}
	if n := counter(t, a0.promReg, "kasd_peer_connections_total", nil); n != 1 { // kas-1 of fleet a only
		t.Fatalf("fleet a's kas-0 accepted %v peer connections, want 1 (from kas-1)", n)
	}

	// A fleet-b key that names fleet a's kasd as the holder of gamma.
	c, err := registry.NewClient(registry.ClientConfig{Endpoints: f.etcd.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	forged, err := registry.New(c, registry.Config{FleetID: "fleet-b", TTL: f.ttl}, registry.Instance{ID: "kas-a0", PeerAddr: a0.peerLn.Addr().String()}, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer forged.Close()
	forged.SetAgentConnections("gamma", 1)
	waitFor(t, "fleet b sees the forged holder", func() bool { return len(b0.reg.Holders("gamma")) == 1 })
	code, body := f.get(b0, "gamma", "/x")
	if code != 502 || !strings.Contains(body, "fleet_mismatch") || !strings.Contains(body, `fleet \"fleet-a\"`) || !strings.Contains(body, `fleet \"fleet-b\"`) {
		t.Fatalf("forwarding to another fleet's kasd: %d %s", code, body)
	}
	if n := refusals(t, a0, "accept", "fleet_mismatch"); n != 1 {
		t.Errorf(`fleet a: kasd_peer_refusals_total{side="accept",reason="fleet_mismatch"} = %v`, n)
	}
	if n := refusals(t, b0, "dial", "refused_by_peer"); n != 1 {
		t.Errorf(`fleet b: kasd_peer_refusals_total{side="dial",reason="refused_by_peer"} = %v`, n)
	}
	for name, l := range map[string]*fleetLog{"a0": logA0, "b0": logB0} {
		if s := l.String(); !strings.Contains(s, `"level":"error"`) || !strings.Contains(s, "peer handshake refused") || !strings.Contains(s, "fleet_mismatch") {
			t.Errorf("%s did not log the refusal at error level:\n%s", name, s)
		}
	}
	if code, _ := f.get(b0, "beta", "/x"); code != 200 {
		t.Errorf("fleet b after the refusal: %d", code)
	}
}

// Same fleet id, another peer secret: CheckFleetSecret (what kasd runs before serving) refuses
// to join and names the instances, and if such a kasd runs anyway, the fleet's kasd refuses it
// at the handshake with secret_mismatch, logged and counted, instead of an anonymous 502.
func TestFleetOtherSecretRefused(t *testing.T) {
	f := newFleetEnv(t, 0)
	good := []byte("the-fleet-peer-secret-the-fleet-peer-secret")
	bad := []byte("another-peer-secret-another-peer-secret!!")
	x0, log0 := f.startFleetNode("kas-0", "prod", good)
	x1, _ := f.startFleetNode("kas-1", "prod", good)
	f.startAgent("alpha", "r0", namedService(t, "alpha").URL, []*node{x0}, 1)
	waitFor(t, "kas-1 sees alpha", func() bool { return len(x1.reg.Holders("alpha")) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := kasd.CheckFleetSecret(ctx, x1.reg, good); err != nil {
		t.Fatalf("a replica with the fleet's secret: %v", err)
	}
	intruder, _ := f.startFleetNode("kas-2", "prod", bad)
	err := kasd.CheckFleetSecret(ctx, intruder.reg, bad)
	if !errors.Is(err, kasd.ErrPeerSecretMismatch) || !strings.Contains(err.Error(), "kas-0, kas-1") || !strings.Contains(err.Error(), "--peer-secret-file") {
		t.Fatalf("CheckFleetSecret with another secret: %v", err)
	}
	t.Logf("kasd refuses to start: %v", err)

	// Running anyway: it sees the fleet's agents, and its peers refuse it by name.
	waitFor(t, "kas-2 sees alpha", func() bool { return len(intruder.reg.Holders("alpha")) == 1 })
	code, body := f.get(intruder, "alpha", "/x")
	if code != 502 || !strings.Contains(body, "secret_mismatch") || !strings.Contains(body, "--peer-secret-file") {
		t.Fatalf("through the kasd with another secret: %d %s", code, body)
	}
	if n := refusals(t, x0, "accept", "secret_mismatch"); n != 1 {
		t.Errorf(`kas-0: kasd_peer_refusals_total{side="accept",reason="secret_mismatch"} = %v`, n)
	}
	if n := refusals(t, intruder, "dial", "refused_by_peer"); n != 1 {
		t.Errorf(`kas-2: kasd_peer_refusals_total{side="dial",reason="refused_by_peer"} = %v`, n)
	}
	if s := log0.String(); !strings.Contains(s, "peer handshake refused") || !strings.Contains(s, "secret_mismatch") || !strings.Contains(s, `"peer":"kas-2"`) {
		t.Errorf("kas-0 did not log the refusal:\n%s", s)
	}
	// The fleet itself is unaffected.
	if code, body := f.get(x1, "alpha", "/x"); code != 200 || body != "alpha /x" {
		t.Errorf("kas-1 -> kas-0: %d %s", code, body)
	}
}

// A peer of the fleet that sends no fleet id (a kasd older than fleet ids) is refused by
// name, as is a hello with the right fleet id and a proof made for another fleet.
func TestFleetHelloWithoutFleetIDRefused(t *testing.T) {
	f := newFleetEnv(t, 0)
	key := []byte("the-fleet-peer-secret-the-fleet-peer-secret")
	x0, _ := f.startFleetNode("kas-0", "prod", key)
	d, err := quic.NewDialer(&tls.Config{InsecureSkipVerify: true, NextProtos: []string{api.ALPNPeer}}, quic.Config{}) //nolint:gosec // a test peer
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i, tc := range []struct {
		fleet, proofFleet, reason string
	}{
		{"", "prod", "no_fleet_id"},
		{"prod", "staging", "secret_mismatch"}, // the proof binds the fleet id
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		qc, err := d.Dial(ctx, x0.peerLn.Addr().String())
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		st, err := qc.OpenStreamSync(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		cs := qc.ConnectionState().TLS
		exp, _ := cs.ExportKeyingMaterial(auth.PeerExporterLabel, nil, auth.PeerExporterLength)
		id := fmt.Sprintf("old-%d", i)
		_ = api.WriteFrame(st, &api.PeerHello{Version: api.ProtocolVersion, InstanceID: id, Proof: auth.PeerProof(key, tc.proofFleet, id, exp), FleetID: tc.fleet})
		_, rerr := api.ReadExpect(st, api.TypePeerHello)
		cancel()
		_ = qc.CloseWithError(0, "")
		if rerr == nil {
			t.Fatalf("%s: accepted", tc.reason)
		}
		if n := refusals(t, x0, "accept", tc.reason); n != 1 {
			t.Errorf("%s: counted %v, error %v", tc.reason, n, rerr)
		}
	}
}
