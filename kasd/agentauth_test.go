package kasd_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// attacker dials kasd's agent port from its own source address and presents made-up tokens.
type attacker struct {
	t   *testing.T
	tr  *quicgo.Transport
	tls *quicgo.Config
	e   *env
}

func newAttacker(t *testing.T, e *env, source string) *attacker {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(source)})
	if err != nil {
		t.Skipf("cannot bind %s: %v", source, err)
	}
	tr := &quicgo.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close(); pc.Close() })
	return &attacker{t: t, tr: tr, e: e, tls: quic.Config{}.QUICConfig()}
}

// attempt makes one handshake with a random token and returns kasd's answer.
func (a *attacker) attempt(ctx context.Context) (*api.Error, error) {
	tlsConf, err := quic.ClientTLSConfig(a.e.caFile, "localhost", api.ALPNAgent)
	if err != nil {
		return nil, err
	}
	addr, err := net.ResolveUDPAddr("udp", a.e.agentUDP)
	if err != nil {
		return nil, err
	}
	qc, err := a.tr.Dial(ctx, addr, tlsConf, a.tls)
	if err != nil {
		return nil, err
	}
	defer qc.CloseWithError(0, "")
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 32)
	_, _ = rand.Read(tok)
	if err := api.WriteFrame(st, &api.Hello{Version: api.ProtocolVersion, Token: hex.EncodeToString(tok), Replica: "x"}); err != nil {
		return nil, err
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := api.ReadFrame(st)
	if err != nil {
		// kasd also sends its refusal as the close reason, in case the frame is lost with
		// the close (a busy machine): "<code>: <message> (retry_after_ms=N)".
		var appErr *quicgo.ApplicationError
		if errors.As(err, &appErr) && appErr.Remote {
			return refusalFromClose(appErr.ErrorMessage)
		}
		return nil, err
	}
	e, ok := m.(*api.Error)
	if !ok {
		return nil, errors.New("admitted with a random token")
	}
	return e, nil
}

// refusalFromClose parses the close reason kasd gives a refused agent connection.
func refusalFromClose(reason string) (*api.Error, error) {
	code, msg, ok := strings.Cut(reason, ": ")
	if !ok {
		return nil, fmt.Errorf("close reason %q", reason)
	}
	e := &api.Error{Message: msg}
	for _, c := range []api.Code{api.CodeUnauthenticated, api.CodeOverloaded} {
		if c.String() == code {
			e.Code = c
		}
	}
	if e.Code != api.CodeUnauthenticated && e.Code != api.CodeOverloaded {
		return nil, fmt.Errorf("close reason %q", reason)
	}
	if _, ms, ok := strings.Cut(msg, "(retry_after_ms="); ok {
		n, _ := strconv.Atoi(strings.TrimSuffix(ms, ")"))
		e.RetryAfter = time.Duration(n) * time.Millisecond
	}
	return e, nil
}

// TestAgentAuthSourceLimit: 1,000 handshakes with random tokens from one source make only a
// bounded number of agent_info calls to GitLab (the burst: the limiter's clock stands still
// while they run), a real agent from another source is still admitted, and the limited source
// earns one attempt back per 1/rate seconds.
func TestAgentAuthSourceLimit(t *testing.T) {
	const burst, rate, attempts = 10, 2.0, 1000
	var clock atomic.Int64 // the limiter's time, in nanoseconds since epoch
	epoch := time.Now()
	now := func() time.Time { return epoch.Add(time.Duration(clock.Load())) }
	gl := gitlabtest.New(t, glSecret)
	glReg := prometheus.NewRegistry()
	// GitLab's own rate limit high enough that it is not what bounds the calls.
	client, err := gitlab.New(gitlab.Config{URL: gl.URL, AuthSecret: glSecret, Version: "test", RateLimit: 10000, Burst: 10000}, glReg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	limReg := prometheus.NewRegistry()
	limited, err := kasd.NewSourceLimitedAuth(kasd.GitLabAuth{Client: client}, kasd.SourceLimits{Burst: burst, Rate: rate, Now: now}, limReg)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *kasd.Config) { c.AgentAuth = limited })
	good := "good-agent-token-0123456789abcdef"
	gl.AddAgent(good, gitlab.AgentInfo{AgentID: 7, ProjectID: 1, AgentName: "prod"})

	a := newAttacker(t, e, "127.0.0.2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var mu sync.Mutex
	codes := map[api.Code]int{}
	var wg sync.WaitGroup
	next := make(chan struct{})
	for range 16 {
		wg.Go(func() {
			for range next {
				e, err := a.attempt(ctx)
				mu.Lock()
				if err != nil {
					codes[api.CodeInternal]++
					t.Errorf("attempt: %v", err)
				} else {
					codes[e.Code]++
				}
				mu.Unlock()
			}
		})
	}
	for range attempts {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	calls := gl.AgentInfoCalls()
	bound := burst
	t.Logf("%d attempts in %v: %d agent_info calls (bound %d), answers %v", attempts, elapsed.Round(time.Millisecond), calls, bound, codes)
	if calls > bound {
		t.Fatalf("%d agent_info calls for %d random tokens from one source, want at most %d", calls, attempts, bound)
	}
	if codes[api.CodeUnauthenticated] != calls || codes[api.CodeOverloaded] != attempts-calls {
		t.Fatalf("answers %v, want %d unauthenticated (asked GitLab) and the rest overloaded", codes, calls)
	}
	if n := counter(t, limReg, "kasd_agent_auth_source_refusals_total", nil); n != float64(attempts-calls) {
		t.Fatalf("kasd_agent_auth_source_refusals_total = %v, want %d", n, attempts-calls)
	}
	if n := counter(t, limReg, "kasd_agent_auth_failures_total", nil); n != float64(calls) {
		t.Fatalf("kasd_agent_auth_failures_total = %v, want %d", n, calls)
	}

	// A real agent from another source (127.0.0.1) is admitted while the first is limited.
	before := gl.AgentInfoCalls()
	ag := e.startAgent(good, "r1", map[string]string{"web": "http://127.0.0.1:1"})
	waitConnected(t, ag, 1)
	if got := gl.AgentInfoCalls() - before; got != 1 {
		t.Fatalf("real agent: %d agent_info calls, want 1", got)
	}
	e1, err := a.attempt(ctx)
	if err != nil || e1.Code != api.CodeOverloaded || e1.RetryAfter <= 0 || e1.RetryAfter > time.Duration(float64(time.Second)/rate) {
		t.Fatalf("limited source after the real agent: %v %v, want overloaded with a retry hint", e1, err)
	}
	// Slowed, not banned: 1/rate later the source may try once more (GitLab is asked), then
	// it is refused again.
	clock.Add(int64(float64(time.Second) / rate))
	before = gl.AgentInfoCalls()
	if e, err := a.attempt(ctx); err != nil || e.Code != api.CodeUnauthenticated || gl.AgentInfoCalls() != before+1 {
		t.Fatalf("after 1/rate: %v %v (%d calls), want one more GitLab call", e, err, gl.AgentInfoCalls()-before)
	}
	if e, err := a.attempt(ctx); err != nil || e.Code != api.CodeOverloaded {
		t.Fatalf("right after: %v %v, want overloaded", e, err)
	}
}

// countingAuth refuses every token and counts the calls.
type countingAuth struct{ calls atomic.Int64 }

func (c *countingAuth) Authenticate(context.Context, string) (string, error) {
	c.calls.Add(1)
	return "", api.Errorf(api.CodeUnauthenticated, "no")
}

// TestSourceLimitedAuthBounded: sources are keyed by IPv4 address and IPv6 /64, the map of
// sources is bounded (least recently limited forgotten first, counted), and attempts without a
// source pass unlimited.
func TestSourceLimitedAuthBounded(t *testing.T) {
	next := &countingAuth{}
	reg := prometheus.NewRegistry()
	lim, err := kasd.NewSourceLimitedAuth(next, kasd.SourceLimits{Burst: 1, Rate: 1e-9, MaxSources: 2}, reg)
	if err != nil {
		t.Fatal(err)
	}
	from := func(ip string) context.Context {
		return kasd.WithAgentSource(context.Background(), &net.UDPAddr{IP: net.ParseIP(ip), Port: 1})
	}
	try := func(ctx context.Context) api.Code {
		_, err := lim.Authenticate(ctx, "t")
		return api.CodeOf(err)
	}
	steps := []struct {
		ctx  context.Context
		want api.Code
	}{
		{from("192.0.2.1"), api.CodeUnauthenticated},
		{from("192.0.2.1"), api.CodeOverloaded},
		{from("::ffff:192.0.2.1"), api.CodeOverloaded}, // the same IPv4 source
		{from("2001:db8::1"), api.CodeUnauthenticated},
		{from("2001:db8::2"), api.CodeOverloaded},          // the same /64
		{from("2001:db8:0:1::1"), api.CodeUnauthenticated}, // another /64: the map is full, 192.0.2.1 is forgotten
		{from("192.0.2.1"), api.CodeUnauthenticated},
		{context.Background(), api.CodeUnauthenticated},
		{context.Background(), api.CodeUnauthenticated},
	}
	for i, s := range steps {
		if got := try(s.ctx); got != s.want {
			t.Fatalf("step %d: %v, want %v", i, got, s.want)
		}
	}
	if next.calls.Load() != 6 {
		t.Fatalf("%d calls reached the authenticator, want 6", next.calls.Load())
	}
	if n := counter(t, reg, "kasd_agent_auth_source_evictions_total", nil); n != 2 {
		t.Fatalf("evictions = %v, want 2", n)
	}
	if n := counter(t, reg, "kasd_agent_auth_sources", nil); n != 2 {
		t.Fatalf("sources = %v, want 2", n)
	}
}
