package kasd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
)

// TestReloadedTokensFileDisconnectsRevokedAgent: an agent whose token a reload of the agent
// tokens file removes is disconnected at once (its requests in flight end with an error instead
// of running on), cannot reconnect, and is counted; an agent whose token stays is untouched,
// and so are its requests, many of them in flight across the reload.
func TestReloadedTokensFileDisconnectsRevokedAgent(t *testing.T) {
	tokens := map[string]string{"delta": auth.NewAgentToken(), "epsilon": auth.NewAgentToken()}
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(ids ...string) {
		t.Helper()
		s := "agents:\n"
		for _, id := range ids {
			s += "- id: " + id + "\n  token_sha256: " + auth.TokenSHA256(tokens[id]) + "\n"
		}
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("delta", "epsilon")
	store, err := auth.LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *kasd.Config) { c.AgentAuth = kasd.TokenFileAuth{Store: store}; c.RouteTimeout = 3 * time.Second })
	for id, tok := range tokens {
		e.tokens[id] = tok
	}
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	blockedIn := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			blockedIn <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	defer backend.Close()
	defer unblock() // before backend.Close
	delta := e.startAgent("delta", "r1", map[string]string{"web": backend.URL}, func(c *agentd.Config) {
		c.Backoff.Initial, c.Backoff.Max = 20*time.Millisecond, 50*time.Millisecond
	})
	epsilon := e.startAgent("epsilon", "r1", map[string]string{"web": backend.URL})
	waitConnected(t, delta, 1)
	waitConnected(t, epsilon, 1)

	// A request to delta in flight across the reload: its body never ends by itself.
	// It ends with an error: a 502 if the head had not reached kasd yet, else a cut body.
	blockedDone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/delta/proxy/web/block"), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := e.client.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				err = errors.New("ended as if complete")
			} else {
				err = nil
			}
		} else {
			err = nil
		}
		blockedDone <- err
	}()
	select {
	case <-blockedIn:
	case <-time.After(30 * time.Second):
		t.Fatal("the blocking request did not reach the service")
	}

	// Load on epsilon across the reload: every request must succeed, bodies intact.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			resp := e.do("GET", fmt.Sprintf("/api/v1/agents/epsilon/proxy/web/%d", i), nil)
			body := readAll(t, resp)
			if resp.StatusCode != 200 || body != fmt.Sprintf("ok /%d", i) {
				errs <- fmt.Errorf("epsilon request %d: %d %q", i, resp.StatusCode, body)
			}
		})
	}
	write("epsilon")
	if err := store.Reload(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	select {
	case err := <-blockedDone:
		if err != nil {
			t.Fatalf("the revoked agent's request in flight: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a request of the revoked agent still runs 30s after the reload")
	}
	deadline := time.Now().Add(30 * time.Second)
	for delta.Connected() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the agent whose token was removed is still connected 30s after the reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// It stays out: its reconnections are refused.
	time.Sleep(300 * time.Millisecond)
	if n := delta.Connected(); n != 0 {
		t.Fatalf("the revoked agent reconnected (%d connections)", n)
	}
	resp := e.do("GET", "/api/v1/agents/delta/proxy/web/x", nil)
	if body := readAll(t, resp); resp.StatusCode == 200 {
		t.Fatalf("request to the revoked agent answered 200 %q", body)
	}
	if got := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "revoked"}); got != 1 {
		t.Errorf(`kasd_agent_connections_total{result="revoked"} = %v, want 1`, got)
	}
	if epsilon.Connected() != 1 {
		t.Fatalf("epsilon has %d connections, want 1", epsilon.Connected())
	}
	resp = e.do("GET", "/api/v1/agents/epsilon/proxy/web/after", nil)
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.HasPrefix(body, "ok") {
		t.Fatalf("epsilon after the reload: %d %q", resp.StatusCode, body)
	}
}

// reloadingAuth runs during after each token check, before the connection joins the table.
type reloadingAuth struct {
	kasd.TokenFileAuth
	during func(agentID string)
}

func (a reloadingAuth) Authenticate(ctx context.Context, token string) (string, error) {
	id, err := a.TokenFileAuth.Authenticate(ctx, token)
	if err == nil {
		a.during(id)
	}
	return id, err
}

// TestTokenRevokedDuringHandshakeRefused: a reload that removes a token between its check and
// the connection joining the table (where the reload's sweep cannot see it) still keeps the
// agent out; before that, 20 other agents connect while the file is reloaded over and over, and
// every one of them ends up connected.
func TestTokenRevokedDuringHandshakeRefused(t *testing.T) {
	tokens := map[string]string{"delta": auth.NewAgentToken()}
	var others []string
	for i := range 20 {
		id := fmt.Sprintf("a%d", i)
		others = append(others, id)
		tokens[id] = auth.NewAgentToken()
	}
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(ids ...string) {
		t.Helper()
		s := "agents:\n"
		for _, id := range ids {
			s += "- id: " + id + "\n  token_sha256: " + auth.TokenSHA256(tokens[id]) + "\n"
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Error(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Error(err)
		}
	}
	write(append([]string{"delta"}, others...)...)
	store, err := auth.LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	ra := reloadingAuth{TokenFileAuth: kasd.TokenFileAuth{Store: store}, during: func(id string) {
		if id != "delta" {
			return
		}
		once.Do(func() {
			write(others...)
			if err := store.Reload(); err != nil {
				t.Error(err)
			}
		})
	}}
	e := newEnv(t, func(c *kasd.Config) { c.AgentAuth = ra })
	for id, tok := range tokens {
		e.tokens[id] = tok
	}
	// Reloads of the same file all along while the others connect.
	stop := make(chan struct{})
	var reloads sync.WaitGroup
	reloads.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := store.Reload(); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	var agents []*agentd.Agent
	for _, id := range others {
		agents = append(agents, e.startAgent(id, "r1", map[string]string{"web": "http://127.0.0.1:1"}))
	}
	for _, a := range agents {
		waitConnected(t, a, 1)
	}
	close(stop)
	reloads.Wait()
	// No reload after delta's own: only the check once it is in the table can catch it.
	delta := e.startAgent("delta", "r1", map[string]string{"web": "http://127.0.0.1:1"})
	deadline := time.Now().Add(30 * time.Second)
	for counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "unauthenticated"}) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("delta was not refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if n := delta.Connected(); n != 0 {
		t.Fatalf("the agent whose token was removed during its handshake is connected (%d connections)", n)
	}
	for i, a := range agents {
		if a.Connected() != 1 {
			t.Fatalf("%s has %d connections after the reloads, want 1", others[i], a.Connected())
		}
	}
}
