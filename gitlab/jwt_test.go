package gitlab_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
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
			req.Header.Set("Authorization", "Bearer tok")
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
