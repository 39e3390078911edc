package gitlab_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
)

func TestJWTAcceptedByStandIn(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	if _, err := e.client.AgentInfo(t.Context(), "tok"); err != nil {
		t.Fatal(err)
	}
	r := e.gl.Requests()[0]
	raw := r.Header.Get(gitlab.JWTHeader)
	var claims jwt.RegisteredClaims
	tok, err := jwt.ParseWithClaims(raw, &claims, func(*jwt.Token) (any, error) { return testSecret, nil })
	if err != nil {
		t.Fatal(err)
	}
	if tok.Method.Alg() != "HS256" || claims.Issuer != "gitlab-kas" || len(claims.Audience) != 1 || claims.Audience[0] != "gitlab" || claims.ID == "" {
		t.Errorf("claims %+v alg %s", claims, tok.Method.Alg())
	}
	if life := claims.ExpiresAt.Sub(claims.IssuedAt.Time); life <= 0 || life > 10*time.Second {
		t.Errorf("lifetime %v", life)
	}
	if !claims.NotBefore.Before(claims.IssuedAt.Time) {
		t.Errorf("nbf %v not before iat %v", claims.NotBefore, claims.IssuedAt)
	}
}

func TestJWTFreshPerRequest(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("a", agent1)
	e.gl.AddAgent("b", agent1)
	e.client.AgentInfo(t.Context(), "a")
	e.client.AgentInfo(t.Context(), "b")
	reqs := e.gl.Requests()
	if len(reqs) != 2 || reqs[0].Header.Get(gitlab.JWTHeader) == reqs[1].Header.Get(gitlab.JWTHeader) {
		t.Errorf("JWTs are not unique per request")
	}
}

func TestWrongSecretRejectedByStandIn(t *testing.T) {
	e := newEnv(t, func(c *gitlab.Config) { c.AuthSecret = bytes.Repeat([]byte{0x43}, 32) })
	e.gl.AddAgent("tok", agent1)
	_, err := e.client.AgentInfo(t.Context(), "tok")
	wantCode(t, err, api.CodeUnauthenticated)
	reqs := e.gl.Requests()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0].Rejected, "jwt:") {
		t.Fatalf("stand-in did not reject the JWT: %+v", reqs)
	}
}

// TestStandInChecksJWT makes sure the stand-in checks what GitLab checks, so that the
// client tests above mean something.
func TestStandInChecksJWT(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	now := time.Now()
	valid := func() jwt.RegisteredClaims {
		return jwt.RegisteredClaims{
			Issuer:    "gitlab-kas",
			Audience:  jwt.ClaimStrings{"gitlab"},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
			ExpiresAt: jwt.NewNumericDate(now.Add(5 * time.Second)),
			ID:        "x",
		}
	}
	sign := func(m jwt.SigningMethod, key any, c jwt.Claims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	with := func(f func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := valid()
		f(&c)
		return c
	}
	cases := []struct {
		name   string
		token  string
		status int
	}{
		{"valid", sign(jwt.SigningMethodHS256, testSecret, valid()), 200},
		{"missing", "", 401},
		{"garbage", "a.b.c", 401},
		{"wrong secret", sign(jwt.SigningMethodHS256, []byte("another secret of 32 bytes......"), valid()), 401},
		{"HS512", sign(jwt.SigningMethodHS512, testSecret, valid()), 401},
		{"none", sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid()), 401},
		{"wrong issuer", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.Issuer = "gitlab" })), 401},
		{"wrong audience", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"kas"} })), 401},
		{"no audience", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.Audience = nil })), 401},
		{"audience list", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"x", "gitlab"} })), 200},
		{"expired", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-10 * time.Second)) })), 401},
		{"no exp", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil })), 401},
		{"not yet valid", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Minute)) })), 401},
		{"issued in the future", sign(jwt.SigningMethodHS256, testSecret, with(func(c *jwt.RegisteredClaims) { c.IssuedAt = jwt.NewNumericDate(now.Add(time.Minute)) })), 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.gl.URL+gitlab.AgentInfoPath, nil)
			if tc.token != "" {
				req.Header.Set(gitlab.JWTHeader, tc.token)
			}
			req.Header.Set("Gitlab-Agentk-Api-Request", "tok")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	http.DefaultClient.CloseIdleConnections()
}

// The agent token reaches GitLab where each GitLab version reads it (today's GitLab reads
// Gitlab-Agentk-Api-Request or Gitlab-Agent-Api-Request, older ones Authorization), and a
// module request reaches GitLab as the agent of its context whatever token the caller put in
// any of those headers.
func TestAgentTokenForEveryGitLabVersion(t *testing.T) {
	for _, lookup := range gitlabtest.Lookups {
		t.Run(lookup.String(), func(t *testing.T) {
			e := newEnv(t, nil)
			e.gl.SetTokenLookup(lookup)
			e.gl.AddAgent("tok-a", agent1)
			e.gl.AddAgent("tok-b", gitlab.AgentInfo{AgentID: 43})
			if info, err := e.client.AgentInfo(t.Context(), "tok-a"); err != nil || info.AgentID != agent1.AgentID {
				t.Errorf("agent_info: %+v, %v", info, err)
			}
			srv := e.frontend(t)
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/modules/foo/x", nil)
			req.Header.Set(testTokenHeader, "tok-a")
			req.Header.Set("Authorization", "Bearer tok-b")
			req.Header.Set("Gitlab-Agentk-Api-Request", "tok-b")
			req.Header.Set("Gitlab-Agent-Api-Request", "tok-b")
			resp, err := noRedirects(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var echo gitlabtest.Echo
			if err := json.NewDecoder(resp.Body).Decode(&echo); err != nil || resp.StatusCode != http.StatusOK || echo.AgentID != agent1.AgentID {
				t.Errorf("the module request reached GitLab as agent %d (%d, %v), want %d", echo.AgentID, resp.StatusCode, err, agent1.AgentID)
			}
		})
	}
}

// The stand-in playing today's GitLab ignores Authorization, as GitLab does.
func TestStandInCurrentIgnoresAuthorization(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	jwtToken, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer: gitlab.JWTIssuer, Audience: jwt.ClaimStrings{gitlab.JWTAudience},
		IssuedAt: jwt.NewNumericDate(time.Now()), ExpiresAt: jwt.NewNumericDate(time.Now().Add(5 * time.Second)),
	}).SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		header map[string]string
		status int
	}{
		{"authorization", map[string]string{"Authorization": "Bearer tok"}, 401},
		{"agentk", map[string]string{"Gitlab-Agentk-Api-Request": "tok"}, 200},
		{"agent", map[string]string{"Gitlab-Agent-Api-Request": "tok"}, 200},
		{"empty agentk wins", map[string]string{"Gitlab-Agentk-Api-Request": "", "Gitlab-Agent-Api-Request": "tok"}, 401},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.gl.URL+gitlab.AgentInfoPath, nil)
		req.Header.Set(gitlab.JWTHeader, jwtToken)
		for k, v := range tc.header {
			req.Header[k] = []string{v}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}
