package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/api"
)

var (
	testKey   = []byte("0123456789abcdef0123456789abcdef")
	otherKey  = []byte("fedcba9876543210fedcba9876543210")
	testEpoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func testVerifier() *Verifier {
	return &Verifier{Key: testKey, Now: func() time.Time { return testEpoch }}
}

func date(d time.Duration) *jwt.NumericDate { return jwt.NewNumericDate(testEpoch.Add(d)) }

// validClaims expire in 10 minutes, issued now, for the default audience.
func validClaims() ClientClaims {
	return ClientClaims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer:    DefaultIssuer,
		Subject:   "ci",
		Audience:  jwt.ClaimStrings{DefaultAudience},
		ExpiresAt: date(10 * time.Minute),
		IssuedAt:  date(0),
	}, Agents: []string{"a"}}
}

func mint(t testing.TB, key []byte, c ClientClaims) string {
	t.Helper()
	tok, err := Mint(key, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// signWith signs c with another method (HS512, RS256, none).
func signWith(t testing.TB, m jwt.SigningMethod, key any, c ClientClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// handNone crafts {"alg":"none"} with an empty signature, without the jwt library.
func handNone(claimsJSON string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc([]byte(claimsJSON)) + "."
}

func TestVerify(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	with := func(f func(*ClientClaims)) ClientClaims { c := validClaims(); f(&c); return c }
	expJSON := `{"aud":"gitlab-kas","iss":"qkas","agents":["a"],"exp":` + jsonNum(testEpoch.Add(time.Minute)) + `}`

	tests := []struct {
		name    string
		token   string
		v       *Verifier // default testVerifier()
		wantMsg string    // "" means valid
		wantErr error     // jwt sentinel expected in Err, if any
	}{
		{name: "valid", token: mint(t, testKey, validClaims())},
		{name: "valid aud list", token: mint(t, testKey, with(func(c *ClientClaims) { c.Audience = jwt.ClaimStrings{"x", DefaultAudience} }))},
		{name: "valid no iat", token: mint(t, testKey, with(func(c *ClientClaims) { c.IssuedAt = nil }))},
		{name: "custom audience", token: mint(t, testKey, with(func(c *ClientClaims) { c.Audience = jwt.ClaimStrings{"mine"} })),
			v: &Verifier{Key: testKey, Audience: "mine", Now: func() time.Time { return testEpoch }}},
		{name: "expired", token: mint(t, testKey, with(func(c *ClientClaims) { c.ExpiresAt = date(-time.Minute); c.IssuedAt = date(-time.Hour) })),
			wantMsg: "token expired", wantErr: jwt.ErrTokenExpired},
		{name: "not yet valid", token: mint(t, testKey, with(func(c *ClientClaims) { c.NotBefore = date(time.Minute) })),
			wantMsg: "token not valid yet", wantErr: jwt.ErrTokenNotValidYet},
		{name: "issued in the future", token: mint(t, testKey, with(func(c *ClientClaims) { c.IssuedAt = date(time.Minute) })),
			wantMsg: "token issued in the future", wantErr: jwt.ErrTokenUsedBeforeIssued},
		{name: "wrong audience", token: mint(t, testKey, with(func(c *ClientClaims) { c.Audience = jwt.ClaimStrings{"gitlab"} })),
			wantMsg: "wrong audience", wantErr: jwt.ErrTokenInvalidAudience},
		{name: "missing aud", token: mint(t, testKey, with(func(c *ClientClaims) { c.Audience = nil })),
			wantMsg: "aud claim required", wantErr: jwt.ErrTokenRequiredClaimMissing},
		{name: "default audience not accepted by custom verifier", token: mint(t, testKey, validClaims()),
			v: &Verifier{Key: testKey, Audience: "mine", Now: func() time.Time { return testEpoch }}, wantMsg: "wrong audience"},
		{name: "wrong key", token: mint(t, otherKey, validClaims()), wantMsg: "bad signature", wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "wrong key and expired: signature first", token: mint(t, otherKey, with(func(c *ClientClaims) { c.ExpiresAt = date(-time.Minute) })),
			wantMsg: "bad signature"},
		{name: "alg none by hand", token: handNone(expJSON), wantMsg: "signing method not allowed (only HS256)"},
		{name: "alg none by hand with HMAC of key as signature", token: strings.TrimSuffix(handNone(expJSON), ".") + "." + strings.Split(mint(t, testKey, validClaims()), ".")[2],
			wantMsg: "signing method not allowed (only HS256)"},
		{name: "alg none via library", token: signWith(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, validClaims()),
			wantMsg: "signing method not allowed (only HS256)", wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "HS512 with the right key", token: signWith(t, jwt.SigningMethodHS512, testKey, validClaims()),
			wantMsg: "signing method not allowed (only HS256)"},
		{name: "RS256", token: signWith(t, jwt.SigningMethodRS256, rsaKey, validClaims()),
			wantMsg: "signing method not allowed (only HS256)"},
		{name: "unknown alg", token: strings.Replace(mint(t, testKey, validClaims()), "eyJhbGciOiJIUzI1NiIs", base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"XX256",`))[:20], 1),
			wantMsg: "signing method not allowed (only HS256)"},
		{name: "missing exp", token: mint(t, testKey, with(func(c *ClientClaims) { c.ExpiresAt = nil })),
			wantMsg: "exp claim required", wantErr: jwt.ErrTokenRequiredClaimMissing},
		{name: "exp too far in the future", token: mint(t, testKey, with(func(c *ClientClaims) { c.ExpiresAt = date(2 * time.Hour); c.IssuedAt = nil })),
			wantMsg: "token valid for longer than 1h0m0s"},
		{name: "exp-iat too long", token: mint(t, testKey, with(func(c *ClientClaims) { c.IssuedAt = date(-2 * time.Hour); c.ExpiresAt = date(time.Minute) })),
			wantMsg: "token valid for longer than 1h0m0s"},
		{name: "exactly max validity", token: mint(t, testKey, with(func(c *ClientClaims) { c.ExpiresAt = date(time.Hour) }))},
		{name: "custom max validity", token: mint(t, testKey, with(func(c *ClientClaims) { c.ExpiresAt = date(20 * time.Minute) })),
			v: &Verifier{Key: testKey, MaxValidity: 15 * time.Minute, Now: func() time.Time { return testEpoch }}, wantMsg: "token valid for longer than 15m0s"},
		{name: "impersonate without user", token: mint(t, testKey, with(func(c *ClientClaims) { c.Impersonate = &Impersonation{Groups: []string{"g"}} })),
			wantMsg: "impersonate claim without user"},
		{name: "malformed", token: "not.a.jwt", wantMsg: "malformed token", wantErr: jwt.ErrTokenMalformed},
		{name: "two segments", token: "abc.def", wantMsg: "malformed token"},
		{name: "non-canonical base64 signature", token: flipLastBits(mint(t, testKey, validClaims())), wantMsg: "malformed token"},
		{name: "empty", token: "", wantMsg: "empty token"},
		{name: "too long", token: strings.Repeat("a", MaxTokenBytes+1), wantMsg: "token longer than 8192 bytes"},
		{name: "verifier without key", token: mint(t, testKey, validClaims()), v: &Verifier{}, wantMsg: "verifier has no key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := tt.v
			if v == nil {
				v = testVerifier()
			}
			claims, err := v.Verify(tt.token)
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("Verify: %v (cause %v)", err, errors.Unwrap(err))
				}
				if claims == nil || claims.Subject != "ci" {
					t.Fatalf("claims = %+v", claims)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify succeeded, want %q", tt.wantMsg)
			}
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeUnauthenticated {
				t.Fatalf("err = %#v, want *api.Error with CodeUnauthenticated", err)
			}
			if ae.Message != tt.wantMsg {
				t.Fatalf("Message = %q, want %q (cause: %v)", ae.Message, tt.wantMsg, ae.Err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v does not wrap %v", ae.Err, tt.wantErr)
			}
			if claims != nil {
				t.Fatal("claims returned with an error")
			}
			if len(tt.token) > 10 {
				for _, part := range strings.Split(tt.token, ".") {
					if len(part) > 10 && (strings.Contains(err.Error(), part) || (ae.Err != nil && strings.Contains(ae.Err.Error(), part))) {
						t.Fatalf("error %q (cause %v) contains part of the token", err, ae.Err)
					}
				}
			}
		})
	}
}

func jsonNum(t time.Time) string { b, _ := jwt.NewNumericDate(t).MarshalJSON(); return string(b) }

// flipLastBits changes the unused low bits of the signature's last base64
// character: a lenient decoder yields the same signature.
func flipLastBits(tok string) string {
	last := tok[len(tok)-1]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, last)
	// 32-byte signature: 43 characters, the last carries 4 bits + 2 unused.
	return tok[:len(tok)-1] + string(alphabet[i^1])
}

func TestVerifyLeeway(t *testing.T) {
	now := testEpoch
	tok := mint(t, testKey, validClaims()) // exp = epoch+10m, iat = epoch
	nbfTok := mint(t, testKey, func() ClientClaims { c := validClaims(); c.NotBefore = date(time.Minute); return c }())
	tests := []struct {
		name   string
		token  string
		now    time.Duration // offset from epoch
		leeway time.Duration
		ok     bool
	}{
		{"before exp", tok, 10*time.Minute - time.Second, 0, true},
		{"within default leeway after exp", tok, 10*time.Minute + 4*time.Second, 0, true},
		{"beyond default leeway after exp", tok, 10*time.Minute + 6*time.Second, 0, false},
		{"no leeway", tok, 10*time.Minute + time.Second, -1, false},
		{"custom leeway", tok, 10*time.Minute + 50*time.Second, time.Minute, true},
		{"iat slightly in the future", tok, -3 * time.Second, 0, true},
		{"iat too far in the future", tok, -10 * time.Second, 0, false},
		{"nbf within leeway", nbfTok, time.Minute - 4*time.Second, 0, true},
		{"nbf beyond leeway", nbfTok, time.Minute - 6*time.Second, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := &Verifier{Key: testKey, Leeway: tt.leeway, Now: func() time.Time { return now.Add(tt.now) }}
			_, err := v.Verify(tt.token)
			if (err == nil) != tt.ok {
				t.Fatalf("Verify at epoch%+v: err = %v, want ok=%v", tt.now, err, tt.ok)
			}
		})
	}
}

func TestClaimsDecoded(t *testing.T) {
	tests := []struct {
		name    string
		agents  []string
		anyOK   bool
		allowed map[string]bool
	}{
		{"star with AllowAnyAgent: any agent", []string{"*"}, true, map[string]bool{"a": true, "b": true}},
		{"list", []string{"a", "c"}, false, map[string]bool{"a": true, "b": false, "c": true, "*": false}},
		{"list with AllowAnyAgent", []string{"a"}, true, map[string]bool{"a": true, "b": false, "*": false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validClaims()
			c.Agents = tt.agents
			c.Impersonate = &Impersonation{User: "alice", Groups: []string{"dev", "ops"}}
			v := testVerifier()
			v.AllowAnyAgent = tt.anyOK
			got, err := v.Verify(mint(t, testKey, c))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Agents, tt.agents) {
				t.Fatalf("Agents = %#v, want %#v", got.Agents, tt.agents)
			}
			for id, want := range tt.allowed {
				if got.AllowsAgent(id) != want {
					t.Errorf("AllowsAgent(%q) = %v, want %v", id, !want, want)
				}
			}
			if imp := got.Impersonate; imp == nil || imp.User != "alice" || !slices.Equal(imp.Groups, []string{"dev", "ops"}) {
				t.Fatalf("Impersonate = %+v", imp)
			}
		})
	}
	if (&ClientClaims{}).AllowsAgent("a") {
		t.Fatal("claims without agents allowed an agent")
	}
}

func TestMintRefuses(t *testing.T) {
	for name, f := range map[string]func(*ClientClaims){
		"nil agents":        func(c *ClientClaims) { c.Agents = nil },
		"empty agents":      func(c *ClientClaims) { c.Agents = []string{} },
		"star next to ids":  func(c *ClientClaims) { c.Agents = []string{"*", "a"} },
		"invalid agent id":  func(c *ClientClaims) { c.Agents = []string{"a/b"} },
		"no issuer":         func(c *ClientClaims) { c.Issuer = "" },
		"CR LF in subject":  func(c *ClientClaims) { c.Subject = "ci\r\nX-Evil: 1" },
		"NUL in group name": func(c *ClientClaims) { c.Impersonate = &Impersonation{User: "u", Groups: []string{"g\x00"}} },
	} {
		c := validClaims()
		f(&c)
		if _, err := Mint(testKey, c); err == nil {
			t.Errorf("%s: Mint accepted it", name)
		}
	}
	c := validClaims()
	c.Agents = []string{AnyAgent}
	if _, err := Mint(testKey, c); err != nil {
		t.Fatalf(`Mint refused ["*"]: %v`, err)
	}
}

func TestMintEmptyKey(t *testing.T) {
	if _, err := Mint(nil, validClaims()); err == nil {
		t.Fatal("Mint accepted an empty key")
	}
}

// signRaw signs a payload given as JSON text (HS256 with testKey), and an
// optional extra header, without the jwt library: the strictness cases below
// are tokens that Mint refuses to write.
func signRaw(t testing.TB, header, payload string) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	if header == "" {
		header = `{"alg":"HS256","typ":"JWT"}`
	}
	signing := enc([]byte(header)) + "." + enc([]byte(payload))
	sig, err := jwt.SigningMethodHS256.Sign(signing, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + enc(sig)
}

// TestVerifyStrict holds the strictness of issue 12: each token is signed with
// the right key and would have been accepted before.
func TestVerifyStrict(t *testing.T) {
	exp, iat := jsonNum(testEpoch.Add(time.Minute)), jsonNum(testEpoch)
	claims := func(extra string) string {
		return `{"aud":"gitlab-kas","sub":"ci","exp":` + exp + `,"iat":` + iat + extra + `}`
	}
	const iss, agents = `,"iss":"qkas"`, `,"agents":["a"]`
	anyVerifier := testVerifier()
	anyVerifier.AllowAnyAgent = true
	tests := []struct {
		name    string
		header  string
		payload string
		v       *Verifier
		wantMsg string // "" means valid
	}{
		{name: "valid", payload: claims(iss + agents)},
		{name: "agents missing", payload: claims(iss),
			wantMsg: `agents claim required (the agent ids the token reaches, or ["*"] where kasd allows every agent)`},
		{name: "agents null", payload: claims(iss + `,"agents":null`),
			wantMsg: `agents claim required (the agent ids the token reaches, or ["*"] where kasd allows every agent)`},
		{name: "agents empty", payload: claims(iss + `,"agents":[]`),
			wantMsg: `agents claim must not be empty (list agent ids, or ["*"] where kasd allows every agent)`},
		{name: "agents a string", payload: claims(iss + `,"agents":"a"`), wantMsg: "malformed token"},
		{name: "wildcard without AllowAnyAgent", payload: claims(iss + `,"agents":["*"]`),
			wantMsg: `agents claim ["*"] (every agent) is not allowed by this kasd (--api-allow-wildcard)`},
		{name: "wildcard with AllowAnyAgent", payload: claims(iss + `,"agents":["*"]`), v: anyVerifier},
		{name: "wildcard next to an id", payload: claims(iss + `,"agents":["a","*"]`), v: anyVerifier, wantMsg: `agents claim: "*" must be alone`},
		{name: "invalid agent id", payload: claims(iss + `,"agents":["../x"]`), wantMsg: "agents claim: entry 0 is not a valid agent id"},
		{name: "iss missing", payload: claims(agents), wantMsg: "iss claim required"},
		{name: "wrong iss", payload: claims(agents + `,"iss":"gitlab"`), wantMsg: "wrong issuer"},
		{name: "custom iss", payload: claims(agents + `,"iss":"ci"`), v: &Verifier{Key: testKey, Issuer: "ci", Now: func() time.Time { return testEpoch }}},
		{name: "default iss refused by a custom verifier", payload: claims(iss + agents),
			v: &Verifier{Key: testKey, Issuer: "ci", Now: func() time.Time { return testEpoch }}, wantMsg: "wrong issuer"},
		{name: "exp a string", payload: `{"aud":"gitlab-kas","sub":"ci","exp":"` + exp + `"` + iss + agents + `}`,
			wantMsg: "exp claim must be a number (seconds since the epoch)"},
		{name: "nbf a string", payload: claims(iss + agents + `,"nbf":"` + iat + `"`), wantMsg: "nbf claim must be a number (seconds since the epoch)"},
		{name: "iat a string", payload: `{"aud":"gitlab-kas","sub":"ci","exp":` + exp + `,"iat":"` + iat + `"` + iss + agents + `}`,
			wantMsg: "iat claim must be a number (seconds since the epoch)"},
		{name: "nbf null", payload: claims(iss + agents + `,"nbf":null`), wantMsg: "nbf claim must be a number (seconds since the epoch)"},
		{name: "crit header", header: `{"alg":"HS256","typ":"JWT","crit":["exp"]}`, payload: claims(iss + agents), wantMsg: "crit header not supported"},
		{name: "empty crit header", header: `{"alg":"HS256","crit":[]}`, payload: claims(iss + agents), wantMsg: "crit header not supported"},
		{name: "CR LF in sub", payload: `{"aud":"gitlab-kas","sub":"ci\r\nX-Evil: 1","exp":` + exp + iss + agents + `}`, wantMsg: "control character in claim sub"},
		{name: "NUL in impersonated user", payload: claims(iss + agents + `,"impersonate":{"user":"alice\u0000"}`), wantMsg: "control character in claim impersonate"},
		{name: "LF in a group", payload: claims(iss + agents + `,"impersonate":{"user":"alice","groups":["dev\nops"]}`), wantMsg: "control character in claim impersonate"},
		{name: "tab in an unknown claim", payload: claims(iss + agents + `,"note":"a\tb"`), wantMsg: "control character in claim note"},
		{name: "DEL in jti", payload: claims(iss + agents + `,"jti":"j\u007f"`), wantMsg: "control character in claim jti"},
		{name: "C1 control in a claim name", payload: claims(iss + agents + `,"x\u0085":1`), wantMsg: "control character in a claim name"},
		{name: "LF in the header", header: `{"alg":"HS256","kid":"a\nb"}`, payload: claims(iss + agents), wantMsg: "control character in the token header"},
		{name: "impersonate uid", payload: claims(iss + agents + `,"impersonate":{"user":"alice","uid":"42"}`),
			wantMsg: "impersonate claim field uid is not supported (only user and groups); the token is refused rather than served without it"},
		{name: "impersonate extra", payload: claims(iss + agents + `,"impersonate":{"user":"alice","extra":{"scopes":["view"]}}`),
			wantMsg: "impersonate claim field extra is not supported (only user and groups); the token is refused rather than served without it"},
		{name: "impersonate unknown field", payload: claims(iss + agents + `,"impersonate":{"user":"alice","group":["x"]}`), wantMsg: "impersonate claim has an unknown field"},
		{name: "impersonate user and groups", payload: claims(iss + agents + `,"impersonate":{"user":"alice","groups":["dev"]}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := tt.v
			if v == nil {
				v = testVerifier()
			}
			claims, err := v.Verify(signRaw(t, tt.header, tt.payload))
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if claims.Subject != "ci" || len(claims.Agents) == 0 {
					t.Fatalf("claims %+v", claims)
				}
				return
			}
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeUnauthenticated || ae.Message != tt.wantMsg {
				t.Fatalf("err = %v, want unauthenticated %q", err, tt.wantMsg)
			}
			// The same payload signed with another key is refused for its signature, never
			// for a claim: claims are only looked at once the signature is good.
			other := *v
			other.Key = otherKey
			if _, err := other.Verify(signRaw(t, tt.header, tt.payload)); !errors.As(err, &ae) ||
				(ae.Message != "bad signature" && ae.Message != "malformed token") {
				t.Fatalf("with the wrong key: %v", err)
			}
		})
	}
}

// TestVerifyGitLabToken checks that a token shaped like the ones GitLab mints
// for kas (iss gitlab, aud gitlab-kas, no agents) is not a client token for
// kasd: the client API secret is not GitLab's.
func TestVerifyGitLabToken(t *testing.T) {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": "gitlab", "aud": "gitlab-kas", "jti": "4f6e", "iat": testEpoch.Unix(),
		"nbf": testEpoch.Add(-5 * time.Second).Unix(), "exp": testEpoch.Add(time.Minute).Unix(),
	}).SignedString(testKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testVerifier().Verify(tok); err == nil {
		t.Fatal("GitLab-shaped token accepted")
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		want    string
		wantMsg string
	}{
		{name: "bearer", headers: []string{"Bearer abc.def.ghi"}, want: "abc.def.ghi"},
		{name: "lowercase scheme", headers: []string{"bearer abc"}, want: "abc"},
		{name: "uppercase scheme", headers: []string{"BEARER abc"}, want: "abc"},
		{name: "extra spaces", headers: []string{"  Bearer   abc  "}, want: "abc"},
		{name: "missing", wantMsg: "missing Authorization header"},
		{name: "two headers", headers: []string{"Bearer a", "Bearer b"}, wantMsg: "more than one Authorization header"},
		{name: "basic", headers: []string{"Basic dXNlcjpwYXNz"}, wantMsg: `Authorization header is not "Bearer <token>"`},
		{name: "no token", headers: []string{"Bearer"}, wantMsg: `Authorization header is not "Bearer <token>"`},
		{name: "empty token", headers: []string{"Bearer  "}, wantMsg: `Authorization header is not "Bearer <token>"`},
		{name: "token with space", headers: []string{"Bearer a b"}, wantMsg: "malformed bearer token"},
		{name: "bare token", headers: []string{"abc.def.ghi"}, wantMsg: `Authorization header is not "Bearer <token>"`},
		{name: "too long", headers: []string{"Bearer " + strings.Repeat("a", MaxTokenBytes+1)}, wantMsg: "bearer token longer than 8192 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://kas/", nil)
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			got, err := BearerToken(r)
			if tt.wantMsg == "" {
				if err != nil || got != tt.want {
					t.Fatalf("BearerToken = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeUnauthenticated || ae.Message != tt.wantMsg {
				t.Fatalf("err = %v, want unauthenticated %q", err, tt.wantMsg)
			}
		})
	}
}

func TestVerifiedCache(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	v := &Verifier{Key: key, Cache: &VerifiedCache{Size: 2}, Now: func() time.Time { return now }}
	mint := func(exp time.Duration, sub string) string {
		c := ClientClaims{Agents: []string{"a"}}
		c.Audience = jwt.ClaimStrings{DefaultAudience}
		c.Issuer = DefaultIssuer
		c.ExpiresAt = jwt.NewNumericDate(now.Add(exp))
		c.Subject = sub
		tok, err := Mint(key, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tok := mint(time.Minute, "a")
	first, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	again, err := v.Verify(tok)
	if err != nil || again != first {
		t.Fatalf("second verification did not come from the cache: %v", err)
	}
	// A cached token still expires on time.
	now = now.Add(2 * time.Minute)
	if _, err := v.Verify(tok); err == nil {
		t.Fatal("expired token accepted from the cache")
	}
	// Failures are never cached, and the cache stays bounded.
	if _, err := v.Verify(tok + "x"); err == nil {
		t.Fatal("tampered token accepted")
	}
	for i := range 5 {
		if _, err := v.Verify(mint(time.Minute, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(v.Cache.entries); n > 2 {
		t.Fatalf("cache holds %d entries, limit 2", n)
	}
}

// encoding/json matches struct fields without regard to case, but the claim checks read the
// exact names: a claim spelled in another case (it would replace the checked one in the typed
// claims, unchecked) is refused.
func TestClaimNamesAreCaseSensitive(t *testing.T) {
	exp, iat := jsonNum(testEpoch.Add(time.Minute)), jsonNum(testEpoch)
	base := `{"aud":"gitlab-kas","iss":"qkas","sub":"ci","exp":` + exp + `,"iat":` + iat
	t.Run("wildcard without --api-allow-wildcard", func(t *testing.T) {
		v := testVerifier() // AllowAnyAgent false
		c, err := v.Verify(signRaw(t, "", base+`,"agents":["a"],"Agents":["*"]}`))
		if err == nil {
			t.Fatalf("accepted; Agents = %q, AllowsAgent(victim) = %v", c.Agents, c.AllowsAgent("victim"))
		}
	})
	t.Run("impersonate uid dropped silently", func(t *testing.T) {
		v := testVerifier()
		c, err := v.Verify(signRaw(t, "", base+`,"agents":["a"],"Impersonate":{"user":"alice","uid":"42"}}`))
		if err == nil {
			t.Fatalf("accepted, uid dropped: impersonate = %+v", c.Impersonate)
		}
	})
	t.Run("exp as a string", func(t *testing.T) {
		v := testVerifier()
		c, err := v.Verify(signRaw(t, "", `{"aud":"gitlab-kas","iss":"qkas","sub":"ci","Exp":"`+exp+`","agents":["a"]}`))
		if err == nil {
			t.Fatalf("accepted a string exp: %v", c.ExpiresAt)
		}
	})
}
