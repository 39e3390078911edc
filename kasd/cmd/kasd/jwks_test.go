package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/auth"
)

// TestJWKSFlags: with --api-jwks-file, a client JWT signed by a key of the JWKS (ES256 here)
// is accepted by the API with the JWKS issuer and --api-jwt-audience, and the same token with
// another audience, or without a JWKS, is refused.
func TestJWKSFlags(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := jose.JSONWebKey{Key: priv.Public(), KeyID: "k1", Use: "sig", Algorithm: "ES256"}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.Marshal(map[string]any{"keys": []json.RawMessage{jwk}})
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	sign := func(aud string) string {
		now := time.Now()
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, auth.ClientClaims{RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "https://idp.example.com", Subject: "grafana", Audience: jwt.ClaimStrings{aud},
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(5 * time.Minute)),
		}, Agents: []string{"a1"}})
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	get := func(api, token string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/api/v1/agents", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	api := freeAddr(t)
	obs := startKasd(t, "--api-listen", api, "--api-jwks-file", path, "--api-jwks-issuer", "https://idp.example.com",
		"--api-jwt-audience", "qkas")
	if code := get(api, sign("qkas")); code != http.StatusOK {
		t.Fatalf("JWKS-signed token: status %d, want 200", code)
	}
	if code := get(api, sign("gitlab-kas")); code != http.StatusUnauthorized {
		t.Fatalf("JWKS-signed token for another audience: status %d, want 401", code)
	}
	if _, body := status(t, "http://"+obs+"/metrics"); !strings.Contains(body, "kasd_jwks_keys 1") ||
		!strings.Contains(body, `kasd_jwks_refreshes_total{result="ok"} 1`) {
		t.Fatal("metrics lack kasd_jwks_keys 1 and one ok refresh")
	}

	api2 := freeAddr(t)
	startKasd(t, "--api-listen", api2, "--api-jwt-audience", "qkas")
	if code := get(api2, sign("qkas")); code != http.StatusUnauthorized {
		t.Fatalf("JWKS-signed token without --api-jwks-file: status %d, want 401", code)
	}
}

func TestJWKSFlagsRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		msg  string
	}{
		"no issuer":  {[]string{"--api-jwks-url", "https://idp.example.com/keys"}, "Issuer is required"},
		"plain http": {[]string{"--api-jwks-url", "http://idp.example.com/keys", "--api-jwks-issuer", "i"}, "must be https"},
		// Without a key set they were ignored: the provider's tokens were refused (401) and
		// nothing said why.
		"issuer without keys":   {[]string{"--api-jwks-issuer", "https://idp.example.com"}, "need --api-jwks-url or --api-jwks-file"},
		"audience without keys": {[]string{"--api-jwks-audience", "kas"}, "need --api-jwks-url or --api-jwks-file"},
	} {
		t.Run(name, func(t *testing.T) {
			args, _ := gitlabModeArgs(t, auth.NewSecret(), auth.NewSecret())
			// Bounded: a kasd that accepts the flags runs until its context ends.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			err := run(ctx, append(args, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "--api-jwks") {
				t.Fatalf("run = %v, want %q", err, tc.msg)
			}
		})
	}
}
