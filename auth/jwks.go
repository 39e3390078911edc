package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// JWKS limits and defaults.
const (
	// MaxJWKSBytes is the largest JWKS document read, from a file or a URL.
	MaxJWKSBytes = 512 << 10
	// MaxJWKSKeys is the most keys a JWKS may hold; a larger set is refused
	// whole (the last good set stays in use).
	MaxJWKSKeys = 128
	// MinRSABits is the smallest RSA modulus accepted; smaller keys are
	// skipped.
	MinRSABits = 2048
	// DefaultJWKSRefresh is JWKSConfig.RefreshInterval's default.
	DefaultJWKSRefresh = 5 * time.Minute
	// DefaultJWKSMinRefresh is JWKSConfig.MinRefreshInterval's default.
	DefaultJWKSMinRefresh = 30 * time.Second
	// DefaultJWKSTimeout is JWKSConfig.Timeout's default.
	DefaultJWKSTimeout = 10 * time.Second
)

// JWKSConfig configures a JWKS. One of File and URL is required, and Issuer.
type JWKSConfig struct {
	// File is a JWKS document on disk (re-read every RefreshInterval).
	File string
	// URL is where the JWKS is fetched from (an OIDC provider's jwks_uri,
	// GitLab's /oauth/discovery/keys). https only, except to a loopback
	// address; redirects follow the same rule.
	URL string
	// Issuer is the iss every token verified with these keys must carry.
	// Required.
	Issuer string
	// Audience, if set, is the aud these tokens must carry instead of the
	// Verifier's Audience.
	Audience string
	// RefreshInterval is how often the set is re-read. Default
	// DefaultJWKSRefresh (5m).
	RefreshInterval time.Duration
	// MinRefreshInterval is the shortest time between two re-reads caused by
	// a token whose kid is not in the set, so that made-up kids cannot make
	// kasd hammer the provider. Default DefaultJWKSMinRefresh (30s).
	MinRefreshInterval time.Duration
	// Timeout bounds one fetch from URL. Default DefaultJWKSTimeout (10s).
	Timeout time.Duration
	// RootCAs verifies URL's certificate. Default: the system roots.
	RootCAs *x509.CertPool
	// Registerer, if set, receives kasd_jwks_refreshes_total{result},
	// kasd_jwks_keys and kasd_jwks_last_success_timestamp_seconds.
	Registerer prometheus.Registerer
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// JWKS is a [KeySource] backed by a JSON Web Key Set (RFC 7517) in a file
// or at a URL. It keeps the last good set: a read that fails (unreachable,
// too large, not a JWKS, no usable key) is counted and changes nothing. Keys
// are indexed by kid and algorithm: an RSA key only verifies RS256, a P-256
// key only ES256, an Ed25519 key only EdDSA, and a key whose alg, use or
// key_ops say otherwise, a symmetric key, a private key and an RSA key
// shorter than MinRSABits are skipped.
//
// [JWKS.Run] re-reads the set every RefreshInterval; a token whose kid is
// unknown causes one re-read, at most every MinRefreshInterval, inside
// VerificationKeys. A JWKS starts no goroutine of its own.
type JWKS struct {
	cfg    JWKSConfig
	client *http.Client
	set    atomic.Pointer[keySet]

	refreshMu   sync.Mutex // held during a read; guards lastAttempt
	lastAttempt time.Time

	refreshes   *prometheus.CounterVec
	keysGauge   prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// jwksResults are the values of kasd_jwks_refreshes_total's result label.
var jwksResults = []string{"ok", "fetch_error", "too_large", "parse_error", "rate_limited"}

// jwksError is a failed read, with its metric label.
type jwksError struct {
	result string
	err    error
}

func (e *jwksError) Error() string { return e.err.Error() }
func (e *jwksError) Unwrap() error { return e.err }

// NewJWKS checks cfg and reads the set once: kasd does not start with a JWKS
// it cannot read.
func NewJWKS(ctx context.Context, cfg JWKSConfig) (*JWKS, error) {
	if (cfg.File == "") == (cfg.URL == "") {
		return nil, errors.New("auth: jwks: exactly one of File and URL is required")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("auth: jwks: Issuer is required (the iss of the tokens these keys sign)")
	}
	if cfg.URL != "" {
		if err := checkJWKSURL(cfg.URL); err != nil {
			return nil, err
		}
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultJWKSRefresh
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = DefaultJWKSMinRefresh
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultJWKSTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	tr.MaxResponseHeaderBytes = 64 << 10
	tr.DisableKeepAlives = true // one read every few minutes: no idle connection (or its goroutines) to keep
	j := &JWKS{
		cfg: cfg,
		client: &http.Client{
			Transport: tr,
			Timeout:   cfg.Timeout,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 3 {
					return errors.New("too many redirects")
				}
				return checkJWKSURL(req.URL.String())
			},
		},
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_jwks_refreshes_total",
			Help: "Reads of the client JWT JWKS, by result (anything but ok keeps the last good set; rate_limited: an unknown kid did not cause a read).",
		}, []string{"result"}),
		keysGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kasd_jwks_keys", Help: "Usable keys in the client JWT JWKS in use.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kasd_jwks_last_success_timestamp_seconds", Help: "When the client JWT JWKS was last read successfully.",
		}),
	}
	for _, r := range jwksResults {
		j.refreshes.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{j.refreshes, j.keysGauge, j.lastSuccess} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("auth: jwks: %w", err)
			}
		}
	}
	j.refreshMu.Lock()
	err := j.refreshLocked(ctx)
	j.refreshMu.Unlock()
	if err != nil {
		return nil, err
	}
	return j, nil
}

// checkJWKSURL allows https, and http only to a loopback address.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("auth: jwks: URL: %w", err)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return errors.New("auth: jwks: URL must be https (http only to a loopback address)")
	}
	return fmt.Errorf("auth: jwks: URL scheme %q is not https", u.Scheme)
}

// Issuer implements KeySource.
func (j *JWKS) Issuer() string { return j.cfg.Issuer }

// Audience implements KeySource.
func (j *JWKS) Audience() string { return j.cfg.Audience }

// Len returns the number of usable keys in the set in use.
func (j *JWKS) Len() int { return len(j.set.Load().keys) }

// VerificationKeys implements KeySource. When no key matches, the set is
// re-read once (unless one was read less than MinRefreshInterval ago) and
// looked up again, so a key the provider has just rotated in is found.
func (j *JWKS) VerificationKeys(kid, alg string) ([]crypto.PublicKey, error) {
	if keys := j.set.Load().lookup(kid, alg); len(keys) > 0 {
		return keys, nil
	}
	j.refreshMu.Lock()
	defer j.refreshMu.Unlock()
	// Another caller may have read the set while this one waited.
	if keys := j.set.Load().lookup(kid, alg); len(keys) > 0 {
		return keys, nil
	}
	if j.cfg.Now().Sub(j.lastAttempt) < j.cfg.MinRefreshInterval {
		j.refreshes.WithLabelValues("rate_limited").Inc()
		return nil, errors.New("no JWKS key for the token's kid and alg")
	}
	// A synchronous read on the request path, bounded by Timeout; callers
	// with a known kid never wait for it (they do not take refreshMu).
	ctx, cancel := context.WithTimeout(context.Background(), j.cfg.Timeout)
	defer cancel()
	_ = j.refreshLocked(ctx) // counted; the last good set stays
	if keys := j.set.Load().lookup(kid, alg); len(keys) > 0 {
		return keys, nil
	}
	return nil, errors.New("no JWKS key for the token's kid and alg")
}

// Run re-reads the set every RefreshInterval until ctx is done, then
// returns nil. A failed read keeps the last good set (see the metrics).
func (j *JWKS) Run(ctx context.Context) error {
	t := time.NewTicker(j.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			j.Refresh(ctx)
		}
	}
}

// Refresh reads the set now (not rate limited); on failure the last good
// set stays in use and the error is returned.
func (j *JWKS) Refresh(ctx context.Context) error {
	j.refreshMu.Lock()
	defer j.refreshMu.Unlock()
	return j.refreshLocked(ctx)
}

func (j *JWKS) refreshLocked(ctx context.Context) error {
	j.lastAttempt = j.cfg.Now()
	set, err := j.read(ctx)
	if err != nil {
		var je *jwksError
		result := "fetch_error"
		if errors.As(err, &je) {
			result = je.result
		}
		j.refreshes.WithLabelValues(result).Inc()
		return fmt.Errorf("auth: jwks: %w", err)
	}
	j.set.Store(set)
	j.refreshes.WithLabelValues("ok").Inc()
	j.keysGauge.Set(float64(len(set.keys)))
	j.lastSuccess.Set(float64(j.cfg.Now().UnixNano()) / 1e9)
	return nil
}

func (j *JWKS) read(ctx context.Context) (*keySet, error) {
	var body io.ReadCloser
	if j.cfg.File != "" {
		f, err := os.Open(j.cfg.File)
		if err != nil {
			return nil, &jwksError{"fetch_error", err}
		}
		body = f
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.cfg.URL, nil)
		if err != nil {
			return nil, &jwksError{"fetch_error", err}
		}
		req.Header.Set("Accept", "application/jwk-set+json, application/json")
		resp, err := j.client.Do(req)
		if err != nil {
			return nil, &jwksError{"fetch_error", err}
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, &jwksError{"fetch_error", fmt.Errorf("GET %s: status %d", j.cfg.URL, resp.StatusCode)}
		}
		body = resp.Body
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, MaxJWKSBytes+1))
	if err != nil {
		return nil, &jwksError{"fetch_error", err}
	}
	if len(data) > MaxJWKSBytes {
		return nil, &jwksError{"too_large", fmt.Errorf("JWKS larger than %d bytes", MaxJWKSBytes)}
	}
	set, err := parseJWKS(data)
	if err != nil {
		return nil, &jwksError{"parse_error", err}
	}
	return set, nil
}

// jwk is one usable key: the one algorithm it verifies, and its public key.
type jwk struct {
	kid string
	alg string
	key crypto.PublicKey
}

// keySet is an immutable parsed JWKS.
type keySet struct {
	keys    []jwk
	skipped int // keys in the document that are not usable
}

// lookup returns the keys for alg with this kid; a token without kid may be
// verified by any key for alg (the verifier tries each).
func (s *keySet) lookup(kid, alg string) []crypto.PublicKey {
	if s == nil {
		return nil
	}
	var out []crypto.PublicKey
	for _, k := range s.keys {
		if k.alg == alg && (kid == "" || k.kid == kid) {
			out = append(out, k.key)
		}
	}
	return out
}

// parseJWKS parses a JWKS document. Keys that are not usable for
// verification (see JWKS) are skipped and counted; a document that is not a
// JWKS, holds more than MaxJWKSKeys keys or no usable one is an error.
func parseJWKS(data []byte) (*keySet, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not a JWKS: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New(`not a JWKS: no "keys" array`)
	}
	if len(doc.Keys) > MaxJWKSKeys {
		return nil, fmt.Errorf("JWKS has %d keys, more than %d", len(doc.Keys), MaxJWKSKeys)
	}
	set := &keySet{}
	for _, raw := range doc.Keys {
		k, ok := usableKey(raw)
		if !ok {
			set.skipped++
			continue
		}
		set.keys = append(set.keys, k)
	}
	if len(set.keys) == 0 {
		return nil, fmt.Errorf("JWKS has no usable signature verification key (%d skipped: only RSA >= %d bits, EC P-256 and Ed25519 public keys for signatures)", set.skipped, MinRSABits)
	}
	return set, nil
}

// usableKey maps one JWK to the single algorithm it may verify, or reports
// it unusable.
func usableKey(raw json.RawMessage) (jwk, bool) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return jwk{}, false
	}
	if (k.Use != "" && k.Use != "sig") || !k.IsPublic() {
		return jwk{}, false // encryption keys; symmetric and private keys
	}
	var ops struct {
		KeyOps []string `json:"key_ops"`
	}
	if json.Unmarshal(raw, &ops) != nil || (ops.KeyOps != nil && !slices.Contains(ops.KeyOps, "verify")) {
		return jwk{}, false
	}
	if strings.ContainsFunc(k.KeyID, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return jwk{}, false
	}
	var alg string
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < MinRSABits {
			return jwk{}, false
		}
		alg = "RS256"
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return jwk{}, false
		}
		alg = "ES256"
	case ed25519.PublicKey:
		if len(pub) != ed25519.PublicKeySize {
			return jwk{}, false
		}
		alg = "EdDSA"
		if k.Algorithm == "Ed25519" { // RFC 9864's fully specified name
			k.Algorithm = alg
		}
	default:
		return jwk{}, false
	}
	if k.Algorithm != "" && k.Algorithm != alg {
		return jwk{}, false
	}
	return jwk{kid: k.KeyID, alg: alg, key: k.Key}, true
}
