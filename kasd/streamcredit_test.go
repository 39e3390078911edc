package kasd_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// TestAgentWithoutStreamCreditTimesOut: an agent whose connection grants kasd no stream (its
// QUIC limit of concurrent streams is taken by responses that go on, a watch) gets no request
// past it: a request that waits for a stream is answered 504 after --response-header-timeout,
// counted as response_header_timeout, like one the agent does not answer. It waited in
// OpenStreamSync for as long as its client did (for ever without a client timeout).
func TestAgentWithoutStreamCreditTimesOut(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.ResponseHeaderTimeout = 500 * time.Millisecond })
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost", api.ALPNAgent)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{MaxIncomingStreams: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := d.Dial(ctx, e.agentUDP)
	if err != nil {
		t.Fatal(err)
	}
	control, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.WriteFrame(control, &api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], Replica: "r", Process: "p", Services: []string{"web"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ReadExpect(control, api.TypeWelcome); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer qc.CloseWithError(0, "")
	// The agent answers its one stream with the head of a response that goes on.
	wg.Go(func() {
		st, err := qc.AcceptStream(qc.Context())
		if err != nil {
			return
		}
		if _, err := st.Write(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1})); err != nil {
			return
		}
		<-qc.Context().Done()
	})
	watch := e.do("GET", "/api/v1/agents/alpha/proxy/web/watch", nil)
	defer watch.Body.Close()
	if watch.StatusCode != 200 {
		t.Fatalf("the watch: %d", watch.StatusCode)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/other"), nil)
	req.Header.Set("Authorization", "Bearer "+e.token())
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("a request while the agent grants no stream: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("Qkas-Error") != "deadline_exceeded" {
		t.Fatalf("a request while the agent grants no stream: %d %s", resp.StatusCode, body)
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "response_header_timeout"}); n != 1 {
		t.Errorf("kasd_limit_rejections_total{reason=response_header_timeout} = %v, want 1", n)
	}
}
