package agentd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// A connection kasd asks to move for balance keeps serving its streams to their end, past
// DrainTimeout: nothing forces it to close (kasd is not going away, and the agent's new
// connection is up), and a watch, an event stream or a slow download on it was cut at
// DrainTimeout — the client got a truncated 200 (independent streaming review: 3 of 6
// 100-second event streams cut by one rebalance). DrainTimeout still bounds it once the agent
// itself stops.
func TestMoveKeepsStreamsPastDrainTimeout(t *testing.T) {
	const events = 15 // every 100 ms: 1.5 s, five times DrainTimeout
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range events {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	t.Cleanup(svc.Close)
	dir := t.TempDir()
	k1, k2 := startFakeKasd(t, dir, "k1"), startFakeKasd(t, dir, "k2")
	tlsConf, err := quic.ClientTLSConfig(dir+"/ca.pem", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(svc.URL)
	a, err := New(Config{
		KasAddresses: []string{k1.ln.Addr().String(), k2.ln.Addr().String()}, Token: "t", TLS: tlsConf, Connections: 1,
		Services: map[string]*url.URL{"web": u}, DrainTimeout: 300 * time.Millisecond,
		Transport: TransportConfig{Mode: TransportQUIC},
		Backoff:   quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Instances()) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not connect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	from, to := k1, k2
	if a.Instances()[0] == "k2" {
		from, to = k2, k1
	}
	from.mu.Lock()
	qc := from.conns[0]
	from.mu.Unlock()
	st, err := qc.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := httpstream.RoundTrip(ctx, quic.NewStreamConn(qc, st),
		&api.Request{Kind: api.KindHTTP, Service: "web", Method: "GET", Target: "/events", RequestID: "r1"}, nil,
		&httpstream.Options{ResponseHeaderTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	from.askToMove(t, to.id)
	waitInstances(t, a, to.id)
	body, err := io.ReadAll(resp.Body)
	if err != nil || strings.Count(string(body), "data: ") != events {
		t.Fatalf("the stream on the moved connection: %d events, %v; want all %d", strings.Count(string(body), "data: "), err, events)
	}
}
