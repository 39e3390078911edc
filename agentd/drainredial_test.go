package agentd

import (
	"context"
	"crypto/tls"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// A slot whose kasd drains (GoAway without Prefer) redials another kasd, even where its round
// robin points at the draining one: that one refuses every new connection until it is gone, so
// dialling it costs a refused attempt and a backoff (or, once its listener is closed, a
// handshake timeout) on every rollout.
func TestDrainGoAwayRedialsElsewhere(t *testing.T) {
	k1, k2, tlsConf := startTwoKasd(t)
	reg := prometheus.NewRegistry()
	a, err := New(Config{
		KasAddresses: []string{k1.agentAddr, k2.agentAddr}, Token: k1.token, TLS: tlsConf,
		Services:     map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		DrainTimeout: 5 * time.Second, Registerer: reg,
		Backoff: quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	a.nextAddr.Store(0) // the first dial goes to k1
	runAgent(t, a)
	waitInstances(t, a, "k1")
	// The round robin now points at k1 again for the slot's next dial.
	a.nextAddr.Add(1)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k1.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitInstances(t, a, "k2")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "agentd_connect_attempts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) == 1 && l[0].GetValue() != "ok" && m.GetCounter().GetValue() > 0 {
				t.Errorf("%s %s: %v attempts; the redial went to the draining kasd", mf.GetName(), l[0].GetValue(), m.GetCounter().GetValue())
			}
		}
	}
}

// startTwoKasd starts kasd instances "k1" and "k2" that both know agent alpha by k1's token,
// and returns a client TLS config that trusts both their dev CAs (server name localhost).
func startTwoKasd(t *testing.T) (k1, k2 *testKasd, tlsConf *tls.Config) {
	t.Helper()
	k1 = startTestKasdWith(t, func(c *kasd.Config) { c.InstanceID = "k1" })
	store, err := auth.ParseTokens([]byte("agents:\n- id: alpha\n  token_sha256: " + auth.TokenSHA256(k1.token) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	k2 = startTestKasdWith(t, func(c *kasd.Config) {
		c.InstanceID = "k2"
		c.AgentAuth = kasd.TokenFileAuth{Store: store}
	})
	tlsConf = k1.tls.Clone()
	tlsConf.RootCAs = tlsConf.RootCAs.Clone()
	pem, err := os.ReadFile(k2.caFile)
	if err != nil || !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
		t.Fatal("k2's CA", err)
	}
	return k1, k2, tlsConf
}

// waitInstances waits until a is connected to exactly the kasd instances want.
func waitInstances(t *testing.T, a *Agent, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := a.Instances()
		if len(got) == len(want) {
			same := true
			for i := range got {
				same = same && got[i] == want[i]
			}
			if same {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent connected to %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
