package kasd_test

// A malicious or broken agent, written from api/SPEC.md by an independent black-box review:
// each test names the spec rule it holds kasd to, and failed before its fix.

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

func withRouteTimeout(d time.Duration) envOption { return func(c *kasd.Config) { c.RouteTimeout = d } }

// An agent that ends its send side (FIN) before any response head, on its only (live)
// connection: the one retry of an idempotent GET goes to that connection again, and the client
// has its 502 at once. It waited for another holder until --route-timeout (5 s late); a POST
// got it at once.
func TestStreamEndedBeforeHeadAnsweredAtOnce(t *testing.T) {
	e := newEnv(t, withRouteTimeout(5*time.Second))
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		_ = sc.Close() // FIN before the head
	})
	for _, m := range []string{"POST", "GET"} {
		start := time.Now()
		resp := e.do(m, "/api/v1/agents/alpha/proxy/web/x", nil)
		_ = readAllAny(resp)
		took := time.Since(start)
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "agent_failed" {
			t.Fatalf("%s: %d %s, want 502 agent_failed", m, resp.StatusCode, resp.Header.Get(api.HeaderError))
		}
		if took > 3*time.Second {
			t.Errorf("%s: 502 after %v; the agent's only connection is alive and already failed the request, want it at once (not after --route-timeout)", m, took.Round(time.Millisecond))
		}
	}
}

// SPEC "Headers": never sent in a head: Connection and every field it names, ..., Trailer
// except in the head of a FlagFramed response. "A receiver drops any of them that it gets."
func TestAgentHopByHopFieldsDropped(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: 2, Header: []api.KV{
			{Key: "Connection", Value: "X-Secret, close"}, {Key: "X-Secret", Value: "leak"},
			{Key: "Trailer", Value: "X-T"}, {Key: "X-Kept", Value: "yes"}}})
		_, _ = sc.Write([]byte("ok"))
		_ = sc.Close()
	})
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Kept") != "yes" {
		t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
	}
	if v := resp.Header.Get("X-Secret"); v != "" {
		t.Errorf("X-Secret: %q reached the client although the agent's Connection field names it", v)
	}
	if v := resp.Header.Get("Trailer"); v != "" {
		t.Errorf("Trailer: %q reached the client from a response that is not FlagFramed", v)
	}
}

// A FlagFramed response head that also declares content_length 5, then 3 bytes of data and its
// trailers: the body is cut as the agent's failure (agent_failed). kasd wrote 3 bytes and
// counted a success (the framed body's length was never checked against the head's).
func TestFramedBodyShortOfContentLength(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: 5, Flags: api.FlagFramed})
		_ = api.WriteFrame(sc, &api.Data{Payload: []byte("hel")})
		_ = api.WriteFrame(sc, &api.Trailers{})
		_ = sc.Close()
	})
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("client: %d Content-Length %d, read %q, err %v", resp.StatusCode, resp.ContentLength, b, err)
	time.Sleep(100 * time.Millisecond)
	if n := counter(t, e.reg, "kasd_requests_total", map[string]string{"code": "200"}); n != 0 {
		t.Errorf("kasd_requests_total{code=200} = %v for a body 2 bytes short of the head's content_length", n)
	}
	if n := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "agent_failed"}); n != 1 {
		t.Errorf("kasd_api_errors_total{code=agent_failed} = %v, want 1", n)
	}
}

// SPEC "Limits": MaxHeadSize and MaxHeaderFields bound trailers too, and "kasd counts each
// refusal in kasd_limit_rejections_total{reason}"; "any other malformed or unexpected frame on
// a request stream is counted as protocol_error". Trailers over the limits, a frame other than
// data/trailers in a framed body, and body bytes past content_length (a 204 with a body) are
// refused (the client's response is cut or 502) and counted: they were counted in no reason.
func TestAgentBodyLimitRefusalsCounted(t *testing.T) {
	cases := []struct {
		name   string
		reason string // api/SPEC.md's Limits table
		send   func(sc *quic.StreamConn)
	}{
		{"trailers_513_fields", "response_head_too_large", func(sc *quic.StreamConn) {
			_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
			_ = api.WriteFrame(sc, &api.Data{Payload: []byte("hello")})
			var h []api.KV
			for i := range 513 {
				h = append(h, api.KV{Key: fmt.Sprintf("X-T%d", i), Value: "v"})
			}
			_ = api.WriteFrame(sc, &api.Trailers{Header: h})
		}},
		{"trailers_over_64KiB", "response_head_too_large", func(sc *quic.StreamConn) {
			_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
			_ = api.WriteFrame(sc, &api.Data{Payload: []byte("hello")})
			// a trailers frame header declaring 70,000 bytes
			_, _ = sc.Write([]byte{byte(api.TypeTrailers), 0x01, 0x11, 0x70})
			_, _ = sc.Write(make([]byte, 70000))
		}},
		{"data_frame_over_64KiB", "protocol_error", func(sc *quic.StreamConn) {
			_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
			_ = api.WriteFrame(sc, &api.Data{Payload: []byte("hello")})
			_, _ = sc.Write([]byte{byte(api.TypeData), 0x01, 0x11, 0x70})
			_, _ = sc.Write(make([]byte, 70000))
		}},
		{"response_frame_in_framed_body", "protocol_error", func(sc *quic.StreamConn) {
			_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
			_ = api.WriteFrame(sc, &api.Data{Payload: []byte("hello")})
			_ = api.WriteFrame(sc, &api.Response{Status: 200})
		}},
		{"204_with_body", "protocol_error", func(sc *quic.StreamConn) {
			_ = api.WriteFrame(sc, &api.Response{Status: 204, ContentLength: 5})
			_, _ = sc.Write([]byte("hello"))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
				c.send(sc)
				_ = sc.Close()
			})
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
			_, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("client: %d %s, body err %v", resp.StatusCode, resp.Header.Get(api.HeaderError), err)
			time.Sleep(100 * time.Millisecond)
			for _, r := range []string{"response_head_too_large", "protocol_error"} {
				want := 0.0
				if r == c.reason {
					want = 1
				}
				if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": r}); n != want {
					t.Errorf("kasd_limit_rejections_total{reason=%s} = %v, want %v", r, n, want)
				}
			}
		})
	}
}

// Typed errors caused by the agent name it, as 502s for frame errors did ("agent alpha: ...");
// these did not.
func TestAgentErrorsNameTheAgent(t *testing.T) {
	var logs logSink
	e := newEnv(t, func(c *kasd.Config) { c.Log = logs.logger() })
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		switch f.Target {
		case "/longbody":
			_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: 0})
			_, _ = sc.Write([]byte("hello"))
		case "/unauth":
			_ = api.WriteFrame(sc, &api.Error{Code: api.CodeUnauthenticated, Message: "forged"})
		}
		_ = sc.Close()
	})
	for _, p := range []string{"/longbody", "/unauth"} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+p, nil)
		body := readAllAny(resp)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "agent alpha") {
			t.Errorf("%s: %d %s; want a 502 whose message names agent alpha", p, resp.StatusCode, body)
		}
	}
	// The cause is in the access line at the default level (it was logged at debug only).
	want := map[string]string{"/longbody": "body longer than its content length", "/unauth": "forged"}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		found := 0
		for _, lines := range logs.access(t) {
			for _, l := range lines {
				path, _ := l["path"].(string)
				cause, _ := l["error"].(string)
				for p, w := range want {
					if strings.HasSuffix(path, p) && strings.Contains(cause, w) {
						found++
					}
				}
			}
		}
		if found == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("access lines without their causes:\n%s", logs.String())
		}
	}
}

func readAllAny(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A FlagFramed response head declaring content_length 3, then a 5-byte data frame and its
// trailers: a 502 agent_failed naming the agent. kasd set Content-Length: 3, net/http refused the
// 4th byte (http.ErrContentLength), which kasd took for the client's failure: the client got no
// status at all (curl: "Empty reply from server"), counted as 499 client_canceled.
func TestFramedBodyLongerThanContentLength(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		_ = api.WriteFrame(sc, &api.Response{Status: 200, ContentLength: 3, Flags: api.FlagFramed})
		_ = api.WriteFrame(sc, &api.Data{Payload: []byte("hello")})
		_ = api.WriteFrame(sc, &api.Trailers{})
		_ = sc.Close()
	})
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/x"), nil)
	req.Header.Set("Authorization", "Bearer "+e.token())
	resp, err := e.client.Do(req)
	if err != nil {
		t.Errorf("client got no response at all: %v; want 502 agent_failed naming agent alpha", err)
	} else {
		body := readAllAny(resp)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "agent alpha") {
			t.Errorf("%d %q; want 502 agent_failed naming agent alpha", resp.StatusCode, body)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "client_canceled"}); n != 0 {
		t.Errorf("kasd_api_errors_total{code=client_canceled} = %v: the agent's malformed response is blamed on the client", n)
	}
}

// SPEC "Request streams": after accepted or an interim response "a refusal can no longer
// come": "the request may have been processed, so it is not retried elsewhere". kasd enforces
// it for an error frame (not_holder after a 103 is a protocol error, 502) and now for a
// RESET_STREAM with code 0x11 (refused) too: after a 103 that kasd had passed to its client, a
// POST was sent again to the agent's other connection, and the client finally got 503
// agent_not_connected "the request was not sent" (with Retry-After) after --route-timeout.
func TestRefusedResetAfterInterimNotRetried(t *testing.T) {
	e := newEnv(t)
	// The refusal comes once kasd's client has the 103 (a reset discards frames kasd has not
	// read yet: sent blind, the refusal could come first, and be one).
	got103 := make(chan struct{})
	var once sync.Once
	handle := func(sc *quic.StreamConn, f *api.Request) {
		_, _ = io.Copy(io.Discard, sc)
		_ = api.WriteFrame(sc, &api.Response{Status: 103, Header: []api.KV{{Key: "Link", Value: "</a.css>; rel=preload"}}})
		select {
		case <-got103:
		case <-time.After(10 * time.Second):
		}
		sc.Stream().CancelWrite(quic.StreamCodeRefused)
	}
	a := e.startFakeReplica("alpha", "r1", []string{"web"}, handle)
	b := e.startFakeReplica("alpha", "r2", []string{"web"}, handle)
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
		once.Do(func() { close(got103) })
		return nil
	}})
	req, _ := http.NewRequestWithContext(ctx, "POST", e.url("/api/v1/agents/alpha/proxy/web/order"), strings.NewReader("buy=1"))
	req.Header.Set("Authorization", "Bearer "+e.token())
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAllAny(resp)
	if n := a.streams.Load() + b.streams.Load(); n != 1 {
		t.Errorf("the POST reached the agent %d times; after an interim response it may have been processed and must not be sent again", n)
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("client got %d %s %q; want 502 agent_failed (a refusal after an interim response is a protocol error)", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
}

// The same after accepted (a FlagGated upload): a 502 agent_failed. The client got 503
// shutting_down, a code the README says never reaches a client, telling it the request was
// refused (not processed).
func TestRefusedResetAfterAccepted(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		if !f.Has(api.FlagGated) {
			t.Errorf("request not gated (flags %d)", f.Flags)
		}
		read := make(chan struct{})
		go func() {
			// Body bytes past the replay buffer come only after kasd has read accepted.
			_, _ = io.CopyN(io.Discard, sc, httpstream.DefaultReplayLimit+(256<<10))
			close(read)
			_, _ = io.Copy(io.Discard, sc)
		}()
		_ = api.WriteFrame(sc, &api.Accepted{})
		select {
		case <-read:
		case <-time.After(10 * time.Second):
		}
		sc.Stream().CancelWrite(quic.StreamCodeRefused)
	})
	resp := e.do("POST", "/api/v1/agents/alpha/proxy/web/upload", strings.NewReader(strings.Repeat("x", 4<<20)))
	body := readAllAny(resp)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "agent_failed" {
		t.Errorf("client got %d %s %q; want 502 agent_failed", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
}
