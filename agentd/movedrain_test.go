package agentd

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// A response whose handler has returned, but which kasd is still reading (it relays it to a
// slow client: in chaos kasd-join, to a kasd that had just restarted on a loaded host), is not
// cut when the connection was moved for balance: the agent is not stopping, and closing the
// connection discards what kasd has not read yet. (chaos kasd-join with 2 busy loops: 2 GETs of
// 160-190 KB cut at 35-47 KB, the agent having closed the moved connections itself
// ("agent closing") DrainTimeout after its handlers returned.)
func TestMoveKeepsResponseKasdIsStillReading(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 12<<10) // 192 KiB: within kasd's stream window
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(payload) }))
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
		&api.Request{Kind: api.KindHTTP, Service: "web", Method: "GET", Target: "/big", RequestID: "r1"}, nil,
		&httpstream.Options{ResponseHeaderTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	from.askToMove(t, to.id)
	waitInstances(t, a, to.id)
	// kasd reads the response slowly: 1.5 s, five times DrainTimeout, after the handler returned.
	var got []byte
	buf := make([]byte, 8<<10)
	for {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the response on the moved connection cut after %d of %d bytes: %v", len(got), len(payload), err)
		}
		time.Sleep(1500 * time.Millisecond / time.Duration(len(payload)/len(buf)))
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes, want %d", len(got), len(payload))
	}
}
