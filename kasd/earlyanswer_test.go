package kasd_test

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// earlyAnswerAgent connects a hand-written agent for "alpha" to addr. For each request it sends
// a response head of total bytes and its first part, then stops reading the request body
// (STOP_SENDING code 0, exactly what agentd's ResponseWriter.Finish -> StreamConn.Close sends
// for a request whose body it did not read to the end), waits for proceed, and then sends the
// rest of the body and FIN. The response is complete and well-formed.
func earlyAnswerAgent(t *testing.T, caFile, addr, token string, total int, proceed <-chan struct{}) {
	t.Helper()
	qc, d := agentHandshakeTo(t, caFile, addr, &api.Hello{Version: api.ProtocolVersion, Token: token, AgentVersion: "fake", Replica: "fake-early", Services: []string{"web"}})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := qc.AcceptStream(qc.Context())
			if err != nil {
				return
			}
			sc := quic.NewStreamConn(qc, st)
			wg.Go(func() {
				if _, err := httpstream.ReadRequest(sc); err != nil {
					sc.Abort(quic.StreamCodeInternal)
					return
				}
				body := bytes.Repeat([]byte("x"), total)
				first := 16 << 10
				if _, err := sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: int64(total)}), body[:first]...)); err != nil {
					return
				}
				// The agent answered; it reads no more of the request body.
				sc.Stream().CancelRead(quicgo.StreamErrorCode(quic.StreamCodeNoError))
				select {
				case <-proceed:
				case <-qc.Context().Done():
					return
				}
				if _, err := sc.Write(body[first:]); err != nil {
					return
				}
				_ = sc.CloseWrite()
			})
		}
	})
	t.Cleanup(func() {
		_ = qc.CloseWithError(quic.ConnCodeNoError, "test over")
		wg.Wait()
		d.Close()
	})
}

// uploadWhileAnswered sends a POST with a chunked body to url: one chunk, then, half a second
// later (the agent has answered and stopped reading by then), a second one and the end of the
// body; a second later it lets the agent finish its response, and reads it. It returns how many
// response bytes arrived and the read error. The client never waits for the response before
// sending its body (as curl -T or Go's http.Client do).
func uploadWhileAnswered(t *testing.T, client *http.Client, url, token string, proceed chan struct{}) (int, error) {
	t.Helper()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", url, pr)
	req.Header.Set("Authorization", "Bearer "+token)
	go func() {
		_, _ = pw.Write([]byte("first chunk of the upload"))
		time.Sleep(500 * time.Millisecond)
		_, _ = pw.Write(bytes.Repeat([]byte("y"), 8<<10))
		_ = pw.Close()
		time.Sleep(time.Second)
		close(proceed)
	}()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	return int(n), err
}

// An agent that answers before the upload ends and stops reading the rest (STOP_SENDING, code 0)
// has given a complete answer: the client must get all of it. Through the local route kasd's
// body writer resets only its own send side (httpstream/client.go bodyWriter.run).
func TestEarlyAnswerLocalRoute(t *testing.T) {
	e := newEnv(t)
	proceed := make(chan struct{})
	const total = 1 << 20
	earlyAnswerAgent(t, e.caFile, e.agentUDP, e.tokens["alpha"], total, proceed)
	n, err := uploadWhileAnswered(t, e.client, e.url("/api/v1/agents/alpha/proxy/web/upload"), e.token(), proceed)
	if err != nil || n != total {
		t.Fatalf("local route: got %d of %d response bytes, err %v", n, total, err)
	}
}

// The same through the forwarded route: kas-0 forwards to kas-1, which holds the agent. When the
// agent stops reading the request body, kas-1's splice fails writing the next body bytes to the
// agent stream; it must pass the STOP_SENDING on to kas-0 (whose body writer then stops, as on
// the local route) and keep relaying the response. It used to abort both streams: the client
// got 16 KiB of the 1 MiB response, then a reset (kas-0 aborted it as agent_failed).
func TestEarlyAnswerForwardedRoute(t *testing.T) {
	f := newFleetEnv(t, 2)
	proceed := make(chan struct{})
	const total = 1 << 20
	earlyAnswerAgent(t, f.caFile, f.nodes[1].agentLn.Addr().String(), f.tokens["alpha"], total, proceed)
	f.waitHolders("alpha", "kas-1")
	n, err := uploadWhileAnswered(t, f.client, f.nodes[0].api.URL+"/api/v1/agents/alpha/proxy/web/upload", f.token(), proceed)
	if err != nil || n != total {
		t.Fatalf("forwarded route: got %d of %d response bytes, err %v", n, total, err)
	}
}
