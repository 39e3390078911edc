package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/qkas/qkas/api"
)

const jwksIssuer = "https://gitlab.example.com"

// signer is a private key, the method it signs with and its kid.
type signer struct {
	kid    string
	method jwt.SigningMethod
	priv   crypto.Signer
}

func (s signer) jwk(t testing.TB) json.RawMessage {
	t.Helper()
	b, err := jose.JSONWebKey{Key: s.priv.Public(), KeyID: s.kid, Use: "sig", Algorithm: s.method.Alg()}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	rsaOnce sync.Once
	rsaKeys [2]*rsa.PrivateKey
)

// testSigners returns an RS256, an ES256 and an EdDSA signer; n picks one of
// two key sets so that rotation can be tested.
func testSigners(t testing.TB, n int) []signer {
	t.Helper()
	rsaOnce.Do(func() {
		for i := range rsaKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys[i] = k
		}
	})
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sfx := string(rune('0' + n))
	return []signer{
		{"rsa" + sfx, jwt.SigningMethodRS256, rsaKeys[n]},
		{"ec" + sfx, jwt.SigningMethodES256, ec},
		{"ed" + sfx, jwt.SigningMethodEdDSA, ed},
	}
}

func jwksDoc(t testing.TB, signers ...signer) []byte {
	t.Helper()
	var keys []json.RawMessage
	for _, s := range signers {
		keys = append(keys, s.jwk(t))
	}
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jwksClaims() ClientClaims {
	c := validClaims()
	c.Issuer = jwksIssuer
	return c
}

func (s signer) sign(t testing.TB, c ClientClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, c)
	tok.Header["kid"] = s.kid
	str, err := tok.SignedString(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	return str
}

// signRawWith signs a hand-written header and payload with s.
func (s signer) signRaw(t testing.TB, header, payload string) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	signing := enc([]byte(header)) + "." + enc([]byte(payload))
	sig, err := s.method.Sign(signing, s.priv)
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + enc(sig)
}

// fakeClock is a settable clock for MinRefreshInterval.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func newFileJWKS(t *testing.T, doc []byte) (*JWKS, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := NewJWKS(t.Context(), JWKSConfig{File: path, Issuer: jwksIssuer})
	if err != nil {
		t.Fatal(err)
	}
	return j, path
}

func wantUnauth(t *testing.T, v *Verifier, tok, wantMsg string) {
	t.Helper()
	_, err := v.Verify(tok)
	var ae *api.Error
	if err == nil {
		t.Fatalf("Verify accepted the token; want %q", wantMsg)
	}
	if !errorsAs(err, &ae) || ae.Code != api.CodeUnauthenticated {
		t.Fatalf("err = %v, want api.CodeUnauthenticated", err)
	}
	if wantMsg != "" && !strings.Contains(ae.Message, wantMsg) {
		t.Fatalf("message = %q, want it to contain %q", ae.Message, wantMsg)
	}
}

func errorsAs(err error, target **api.Error) bool {
	e, ok := err.(*api.Error)
	if ok {
		*target = e
	}
	return ok
}

func TestJWKSFileVerifiesEachAlg(t *testing.T) {
	signers := testSigners(t, 0)
	j, _ := newFileJWKS(t, jwksDoc(t, signers...))
	if j.Len() != 3 {
		t.Fatalf("Len = %d, want 3", j.Len())
	}
	v := testVerifier()
	v.Keys = j
	for _, s := range signers {
		t.Run(s.method.Alg(), func(t *testing.T) {
			c, err := v.Verify(s.sign(t, jwksClaims()))
			if err != nil {
				t.Fatal(err)
			}
			if !c.AllowsAgent("a") || c.Subject != "ci" {
				t.Fatalf("claims = %+v", c)
			}
			// iss must be the JWKS issuer, not the HS256 one.
			wantUnauth(t, v, s.sign(t, validClaims()), "wrong issuer")
			// A key only verifies its own algorithm: the RSA kid with an ES256
			// header (signed by the EC key) is refused.
			for _, o := range signers {
				if o.kid == s.kid {
					continue
				}
				hdr := `{"alg":"` + o.method.Alg() + `","typ":"JWT","kid":"` + s.kid + `"}`
				wantUnauth(t, v, o.signRaw(t, hdr, claimsJSON(t, jwksClaims())), "no key")
			}
		})
	}
	// HS256 tokens still verify with the secret, with their own issuer.
	if _, err := v.Verify(mint(t, testKey, validClaims())); err != nil {
		t.Fatal(err)
	}
	c := validClaims()
	c.Issuer = jwksIssuer
	wantUnauth(t, v, mint(t, testKey, c), "wrong issuer")
	// Without Keys, the same RS256 token is refused as before.
	wantUnauth(t, testVerifier(), signers[0].sign(t, jwksClaims()), "only HS256")
}

func claimsJSON(t testing.TB, c ClientClaims) string {
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestJWKSAudience(t *testing.T) {
	s := testSigners(t, 0)[1]
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwksDoc(t, s), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := NewJWKS(t.Context(), JWKSConfig{File: path, Issuer: jwksIssuer, Audience: "qkas-client"})
	if err != nil {
		t.Fatal(err)
	}
	v := testVerifier()
	v.Keys = j
	wantUnauth(t, v, s.sign(t, jwksClaims()), "wrong audience")
	c := jwksClaims()
	c.Audience = jwt.ClaimStrings{"qkas-client"}
	if _, err := v.Verify(s.sign(t, c)); err != nil {
		t.Fatal(err)
	}
}

// TestJWKSAlgorithmConfusion: no token gets a key meant for another algorithm.
func TestJWKSAlgorithmConfusion(t *testing.T) {
	signers := testSigners(t, 0)
	rsaS := signers[0]
	j, _ := newFileJWKS(t, jwksDoc(t, signers...))
	for _, withSecret := range []bool{true, false} {
		v := testVerifier()
		v.Keys = j
		if !withSecret {
			v.Key = nil
		}
		// HS256 "signed" with the RSA public key's bytes, in every spelling
		// an attacker could try.
		der, err := x509.MarshalPKIXPublicKey(rsaS.priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		for _, keyBytes := range [][]byte{der, pemBytes, rsaS.jwk(t), rsaKeys[0].N.Bytes()} {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwksClaims())
			tok.Header["kid"] = rsaS.kid
			str, err := tok.SignedString(keyBytes)
			if err != nil {
				t.Fatal(err)
			}
			wantUnauth(t, v, str, "")
			c := validClaims()
			tok = jwt.NewWithClaims(jwt.SigningMethodHS256, c)
			tok.Header["kid"] = rsaS.kid
			str, _ = tok.SignedString(keyBytes)
			wantUnauth(t, v, str, "")
		}
		// alg none, by hand, with the kid of a JWKS key.
		enc := base64.RawURLEncoding.EncodeToString
		none := enc([]byte(`{"alg":"none","kid":"`+rsaS.kid+`"}`)) + "." + enc([]byte(claimsJSON(t, jwksClaims()))) + "."
		wantUnauth(t, v, none, "signing method not allowed")
		// Another asymmetric alg the keys could be read as (PS256 with RSA).
		wantUnauth(t, v, signWith(t, jwt.SigningMethodPS256, rsaKeys[0], jwksClaims()), "signing method not allowed")
	}
}

// TestJWKSClaimRules: a JWKS token is held to the same rules as an HS256 one.
func TestJWKSClaimRules(t *testing.T) {
	s := testSigners(t, 0)[2]
	j, _ := newFileJWKS(t, jwksDoc(t, s))
	v := testVerifier()
	v.Keys = j
	hdr := `{"alg":"EdDSA","typ":"JWT","kid":"` + s.kid + `"}`
	base := `"iss":"` + jwksIssuer + `","aud":"gitlab-kas","exp":` + jsonNum(testEpoch.Add(time.Minute))
	for _, tc := range []struct{ name, header, payload, msg string }{
		{"no agents", hdr, `{` + base + `}`, "agents claim required"},
		{"empty agents", hdr, `{` + base + `,"agents":[]}`, "must not be empty"},
		{"wildcard", hdr, `{` + base + `,"agents":["*"]}`, "not allowed"},
		{"string exp", hdr, `{"iss":"` + jwksIssuer + `","aud":"gitlab-kas","exp":"` + jsonNum(testEpoch.Add(time.Minute)) + `","agents":["a"]}`, ""},
		{"no iss", hdr, `{"aud":"gitlab-kas","exp":` + jsonNum(testEpoch.Add(time.Minute)) + `,"agents":["a"]}`, "iss claim required"},
		{"crit", `{"alg":"EdDSA","typ":"JWT","kid":"` + s.kid + `","crit":["x"],"x":1}`, `{` + base + `,"agents":["a"]}`, "crit"},
		{"control char", hdr, `{` + base + `,"agents":["a"],"sub":"a\u000db"}`, "control character"},
		{"impersonate uid", hdr, `{` + base + `,"agents":["a"],"impersonate":{"user":"u","uid":"1"}}`, "uid"},
		{"too long", hdr, `{` + base + `,"agents":["a"],"exp":` + jsonNum(testEpoch.Add(2*time.Hour)) + `}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantUnauth(t, v, s.signRaw(t, tc.header, tc.payload), tc.msg)
		})
	}
	// The same header and base claims with agents verify: the refusals above
	// are the rules, not the signature.
	c, err := v.Verify(s.signRaw(t, hdr, `{`+base+`,"agents":["a"],"impersonate":{"user":"u","groups":["g"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Impersonate == nil || c.Impersonate.User != "u" {
		t.Fatalf("impersonate = %+v", c.Impersonate)
	}
}

// jwksServer serves a swappable JWKS over TLS and counts the GETs.
type jwksServer struct {
	srv  *httptest.Server
	doc  atomic.Pointer[[]byte]
	hits atomic.Int64
	code atomic.Int64
}

func newJWKSServer(t *testing.T, doc []byte) *jwksServer {
	s := &jwksServer{}
	s.doc.Store(&doc)
	s.code.Store(200)
	s.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(int(s.code.Load()))
		w.Write(*s.doc.Load())
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *jwksServer) set(doc []byte) { s.doc.Store(&doc) }

func (s *jwksServer) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.srv.Certificate())
	return p
}

func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

func refreshes(t testing.TB, j *JWKS, result string) float64 {
	return metricValue(t, j.refreshes.WithLabelValues(result))
}

func TestJWKSURLRefreshAndRotation(t *testing.T) {
	old, rotated := testSigners(t, 0), testSigners(t, 1)
	ts := newJWKSServer(t, jwksDoc(t, old...))
	clock := &fakeClock{}
	clock.ns.Store(testEpoch.UnixNano())
	reg := prometheus.NewRegistry()
	j, err := NewJWKS(t.Context(), JWKSConfig{URL: ts.srv.URL + "/keys", Issuer: jwksIssuer, RootCAs: ts.pool(),
		MinRefreshInterval: time.Minute, Registerer: reg, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	v := testVerifier()
	v.Keys = j
	for _, s := range old {
		if _, err := v.Verify(s.sign(t, jwksClaims())); err != nil {
			t.Fatalf("%s: %v", s.method.Alg(), err)
		}
	}
	if got := ts.hits.Load(); got != 1 {
		t.Fatalf("GETs after start and known kids = %d, want 1", got)
	}

	// Within MinRefreshInterval of the last read, an unknown kid causes none.
	wantUnauth(t, v, rotated[0].sign(t, jwksClaims()), "no key")
	if got := ts.hits.Load(); got != 1 {
		t.Fatalf("GETs after an unknown kid right after a read = %d, want 1", got)
	}
	// Later, an unknown kid (not published yet) causes one read; more unknown
	// kids within MinRefreshInterval cause none.
	clock.advance(time.Minute)
	wantUnauth(t, v, rotated[0].sign(t, jwksClaims()), "no key")
	if got := ts.hits.Load(); got != 2 {
		t.Fatalf("GETs after an unknown kid = %d, want 2", got)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { _, _ = v.Verify(rotated[1].sign(t, jwksClaims())) })
	}
	wg.Wait()
	if got := ts.hits.Load(); got != 2 {
		t.Fatalf("GETs after 20 more unknown kids within MinRefreshInterval = %d, want 2", got)
	}
	if got := refreshes(t, j, "rate_limited"); got != 21 {
		t.Fatalf("rate_limited = %v, want 21", got)
	}

	// The provider rotates: new keys in, old ones out. Once MinRefreshInterval
	// has passed, the first token with a new kid finds its key.
	ts.set(jwksDoc(t, rotated...))
	clock.advance(time.Minute)
	for _, s := range rotated {
		if _, err := v.Verify(s.sign(t, jwksClaims())); err != nil {
			t.Fatalf("%s after rotation: %v", s.method.Alg(), err)
		}
	}
	if got := ts.hits.Load(); got != 3 {
		t.Fatalf("GETs after rotation = %d, want 3", got)
	}
	wantUnauth(t, v, old[2].sign(t, jwksClaims()), "no key") // rotated out (rate limited: no GET)
	if got := metricValue(t, j.keysGauge); got != 3 {
		t.Fatalf("kasd_jwks_keys = %v", got)
	}

	// Failed reads keep the last good set and are counted by result.
	ts.code.Store(500)
	if err := j.Refresh(t.Context()); err == nil {
		t.Fatal("Refresh with status 500 succeeded")
	}
	ts.code.Store(200)
	ts.set([]byte(`{"keys": "no"}`))
	if err := j.Refresh(t.Context()); err == nil {
		t.Fatal("Refresh of a bad document succeeded")
	}
	ts.set([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))
	if err := j.Refresh(t.Context()); err == nil || !strings.Contains(err.Error(), "no usable") {
		t.Fatalf("Refresh of a set of symmetric keys: %v", err)
	}
	ts.set(append([]byte(`{"keys":[`), []byte(strings.Repeat(" ", MaxJWKSBytes))...))
	if err := j.Refresh(t.Context()); err == nil {
		t.Fatal("Refresh of a too large document succeeded")
	}
	if _, err := v.Verify(rotated[0].sign(t, jwksClaims())); err != nil {
		t.Fatalf("last good set not kept: %v", err)
	}
	for result, want := range map[string]float64{"ok": 3, "fetch_error": 1, "parse_error": 2, "too_large": 1} {
		if got := refreshes(t, j, result); got != want {
			t.Errorf("kasd_jwks_refreshes_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	if n != len(jwksResults)+2 {
		t.Fatalf("registered series = %d, want %d", n, len(jwksResults)+2)
	}
}

// TestJWKSRunPicksUpFileRotation: Run re-reads the file every RefreshInterval.
func TestJWKSRunPicksUpFileRotation(t *testing.T) {
	old, rotated := testSigners(t, 0), testSigners(t, 1)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwksDoc(t, old[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := NewJWKS(t.Context(), JWKSConfig{File: path, Issuer: jwksIssuer, RefreshInterval: 10 * time.Millisecond,
		MinRefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { _ = j.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	v := testVerifier()
	v.Keys = j
	if err := os.WriteFile(path, jwksDoc(t, rotated[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := v.Verify(rotated[1].sign(t, jwksClaims()))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotated key never picked up: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	wantUnauth(t, v, old[1].sign(t, jwksClaims()), "no key")
}

func TestNewJWKSRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  JWKSConfig
		msg  string
	}{
		{"neither", JWKSConfig{Issuer: "i"}, "exactly one"},
		{"both", JWKSConfig{File: "f", URL: "https://x/", Issuer: "i"}, "exactly one"},
		{"no issuer", JWKSConfig{URL: "https://x/"}, "Issuer is required"},
		{"plain http", JWKSConfig{URL: "http://gitlab.example.com/oauth/discovery/keys", Issuer: "i"}, "must be https"},
		{"ftp", JWKSConfig{URL: "ftp://127.0.0.1/keys", Issuer: "i"}, "not https"},
		{"missing file", JWKSConfig{File: filepath.Join(t.TempDir(), "none"), Issuer: "i"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewJWKS(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %q", err, tc.msg)
			}
		})
	}
	// http to loopback is allowed (a sidecar, a test).
	if err := checkJWKSURL("http://127.0.0.1:8080/keys"); err != nil {
		t.Fatal(err)
	}
	if err := checkJWKSURL("http://[::1]/keys"); err != nil {
		t.Fatal(err)
	}
}

func TestParseJWKSSkipsUnusableKeys(t *testing.T) {
	signers := testSigners(t, 0)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(k jose.JSONWebKey) json.RawMessage {
		b, err := k.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	rsaPub := rsaKeys[0].Public()
	bad := []json.RawMessage{
		json.RawMessage(`{"kty":"oct","kid":"sym","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}`),
		mk(jose.JSONWebKey{Key: rsaKeys[0], KeyID: "private"}),
		mk(jose.JSONWebKey{Key: small.Public(), KeyID: "small"}),
		mk(jose.JSONWebKey{Key: p384.Public(), KeyID: "p384"}),
		mk(jose.JSONWebKey{Key: rsaPub, KeyID: "hs", Algorithm: "HS256"}),
		mk(jose.JSONWebKey{Key: rsaPub, KeyID: "ps", Algorithm: "PS256"}),
		mk(jose.JSONWebKey{Key: rsaPub, KeyID: "enc", Use: "enc"}),
		json.RawMessage(`{"kty":"weird"}`),
		json.RawMessage(`"not an object"`),
	}
	ops, _ := json.Marshal(map[string]any{"kty": "EC", "crv": "P-256", "key_ops": []string{"encrypt"}})
	bad = append(bad, ops)
	doc, _ := json.Marshal(map[string]any{"keys": append(bad, signers[0].jwk(t))})
	set, err := parseJWKS(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.keys) != 1 || set.keys[0].kid != signers[0].kid || set.skipped != len(bad) {
		t.Fatalf("keys = %+v, skipped %d (want 1 key, %d skipped)", set.keys, set.skipped, len(bad))
	}
	doc, _ = json.Marshal(map[string]any{"keys": bad})
	if _, err := parseJWKS(doc); err == nil {
		t.Fatal("a set without a usable key was accepted")
	}
	many := make([]json.RawMessage, MaxJWKSKeys+1)
	for i := range many {
		many[i] = signers[2].jwk(t)
	}
	doc, _ = json.Marshal(map[string]any{"keys": many})
	if _, err := parseJWKS(doc); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("a set of %d keys: %v", len(many), err)
	}
}

// FuzzParseJWKS: the parser never panics, and every key it keeps verifies
// exactly one algorithm with a key of that algorithm's type.
func FuzzParseJWKS(f *testing.F) {
	signers := testSigners(f, 0)
	f.Add(jwksDoc(f, signers...))
	for _, s := range signers {
		f.Add(jwksDoc(f, s))
	}
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := parseJWKS(data)
		if err != nil {
			return
		}
		if len(set.keys) == 0 || len(set.keys) > MaxJWKSKeys {
			t.Fatalf("%d keys", len(set.keys))
		}
		for _, k := range set.keys {
			switch pub := k.key.(type) {
			case *rsa.PublicKey:
				if k.alg != "RS256" || pub.N.BitLen() < MinRSABits {
					t.Fatalf("RSA key for %s, %d bits", k.alg, pub.N.BitLen())
				}
			case *ecdsa.PublicKey:
				if k.alg != "ES256" || pub.Curve != elliptic.P256() {
					t.Fatalf("EC key for %s", k.alg)
				}
			case ed25519.PublicKey:
				if k.alg != "EdDSA" {
					t.Fatalf("Ed25519 key for %s", k.alg)
				}
			default:
				t.Fatalf("key of type %T kept", k.key)
			}
		}
	})
}

// TestJWKSTokenWithoutKid: a token without kid is tried against every key of
// its algorithm, and only of its algorithm.
func TestJWKSTokenWithoutKid(t *testing.T) {
	a, b := testSigners(t, 0), testSigners(t, 1)
	j, _ := newFileJWKS(t, jwksDoc(t, a[1], b[1], a[2]))
	v := testVerifier()
	v.Keys = j
	for _, s := range []signer{a[1], b[1], a[2]} {
		tok, err := jwt.NewWithClaims(s.method, jwksClaims()).SignedString(s.priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("%s without kid: %v", s.kid, err)
		}
	}
	// An RS256 token without kid finds no RSA key in this set.
	tok, err := jwt.NewWithClaims(a[0].method, jwksClaims()).SignedString(a[0].priv)
	if err != nil {
		t.Fatal(err)
	}
	wantUnauth(t, v, tok, "no key")
}
