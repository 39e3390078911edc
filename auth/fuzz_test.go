package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"sigs.k8s.io/yaml"

	"github.com/qkas/qkas/api"
)

func FuzzParseTokens(f *testing.F) {
	h1, h2 := TokenSHA256("one"), TokenSHA256("two")
	f.Add([]byte("agents:\n- id: a\n  token_sha256: " + h1 + "\n- id: b\n  token_sha256: " + strings.ToUpper(h2) + "\n"))
	f.Add([]byte(`{"agents":[{"id":"x.y","token_sha256":"` + h1 + `"}]}`))
	f.Add([]byte("agents:\n- id: a\n  token_sha256: " + h1 + "\n- id: a\n  token_sha256: " + h2 + "\n"))
	f.Add([]byte("agents:\n- id: a\n  token_sha256: " + h1 + "\n- id: b\n  token_sha256: " + h1 + "\n"))
	f.Add([]byte("agents: []\n"))
	f.Add([]byte(""))
	f.Add([]byte("agents:\n- id: a\n  extra: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseTokens(data)
		if err != nil {
			return
		}
		entries := s.Entries()
		if len(entries) != s.Len() {
			t.Fatalf("Len %d, %d entries", s.Len(), len(entries))
		}
		for _, e := range entries {
			var h [sha256.Size]byte
			if _, err := hex.Decode(h[:], []byte(e.TokenSHA256)); err != nil || e.TokenSHA256 != strings.ToLower(e.TokenSHA256) {
				t.Fatalf("entry %q: hash not normalised lowercase hex", e.ID)
			}
			if id, ok := s.lookupHash(h); !ok || id != e.ID {
				t.Fatalf("lookupHash(%s) = %q, %v; want %q", e.TokenSHA256, id, ok, e.ID)
			}
		}
		// Re-serialised, the file parses to the same entries.
		out, err := yaml.Marshal(TokensFile{Agents: entries})
		if err != nil {
			t.Fatal(err)
		}
		s2, err := ParseTokens(out)
		if err != nil {
			t.Fatalf("re-serialised file refused: %v\n%s", err, out)
		}
		if !slices.Equal(s2.Entries(), entries) {
			t.Fatalf("round trip changed entries: %v -> %v", entries, s2.Entries())
		}
	})
}

func FuzzVerify(f *testing.F) {
	// Seeds minted with testKey; the fuzzer's verifier for "never without the
	// key" uses fuzzKey, which nothing here ever signs with.
	fuzzKey := []byte("fuzz-key-never-used-to-sign-anything")
	now := func() time.Time { return testEpoch }
	c := validClaims()
	f.Add(mint(f, testKey, c))
	c.Agents = []string{"*"}
	c.Impersonate = &Impersonation{User: "u", Groups: []string{"g"}}
	f.Add(mint(f, testKey, c))
	f.Add(signWith(f, jwt.SigningMethodHS512, testKey, c))
	f.Add(signWith(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, c))
	f.Add(handNone(`{"aud":"gitlab-kas","exp":9999999999}`))
	f.Add(signRaw(f, `{"alg":"HS256","crit":["b64"]}`, `{"aud":"gitlab-kas","iss":"qkas","agents":["a"],"exp":"1772366460"}`))
	f.Add(signRaw(f, "", `{"aud":"gitlab-kas","iss":"qkas","agents":["a"],"sub":"a\r\nb","exp":1772366460,"impersonate":{"user":"u","uid":"1"}}`))
	f.Add("")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		for _, key := range [][]byte{testKey, fuzzKey} {
			v := &Verifier{Key: key, Now: now}
			claims, err := v.Verify(token)
			if err == nil {
				if string(key) == string(fuzzKey) {
					t.Fatalf("verified without the key: %q", token)
				}
				if claims == nil || claims.ExpiresAt == nil || claims.Issuer != DefaultIssuer ||
					len(claims.Agents) == 0 || slices.Contains(claims.Agents, AnyAgent) {
					t.Fatalf("verified without exp, iss or agents, or with every agent: %+v", claims)
				}
				continue
			}
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeUnauthenticated || ae.Message == "" {
				t.Fatalf("err = %#v", err)
			}
			if len(token) >= 16 && strings.Contains(ae.Message, token) {
				t.Fatalf("message %q contains the token", ae.Message)
			}
		}
	})
}
