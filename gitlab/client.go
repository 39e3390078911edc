package gitlab

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/qkas/qkas/api"
)

// Protocol constants shared with GitLab (lib/gitlab/kas.rb, api/internal/kubernetes.rb).
const (
	// JWTHeader carries the JWT that proves a request comes from kas.
	JWTHeader = "Gitlab-Kas-Api-Request"
	// AgentkTokenHeader and AgentTokenHeader carry the agent token, as Authorization: Bearer
	// does (setAgentToken): each GitLab version reads it from one of them.
	AgentkTokenHeader = "Gitlab-Agentk-Api-Request"
	AgentTokenHeader  = "Gitlab-Agent-Api-Request"
	// JWTIssuer and JWTAudience are the iss and aud claims GitLab requires.
	JWTIssuer   = "gitlab-kas"
	JWTAudience = "gitlab"

	// AgentInfoPath is GitLab's agent_info endpoint, relative to the base URL.
	AgentInfoPath = "/api/v4/internal/kubernetes/agent_info"
	// ModulesPathPrefix is the prefix of GitLab's consolidated modules endpoint.
	ModulesPathPrefix = "/api/v4/internal/kubernetes/modules/"

	// jwtValidFor is how long a minted JWT is valid; jwtSkew is subtracted from nbf so a
	// GitLab clock slightly behind ours still accepts it.
	jwtValidFor = 5 * time.Second
	jwtSkew     = 5 * time.Second
)

// Client is kasd's client to GitLab. It is safe for concurrent use. It owns one goroutine per
// caller of AgentInfo that is waiting for a GitLab lookup (each ends with the lookup, within
// Config.Timeout); Close cancels those lookups and waits for the goroutines.
type Client struct {
	cfg       Config
	base      *url.URL
	userAgent string
	transport *http.Transport
	http      *http.Client // agent_info: no redirects followed
	limiter   *rate.Limiter
	metrics   *metrics
	proxy     *httputil.ReverseProxy
	flights   singleflight.Group // keyed by sha256(token)

	// closing ends with Close; it cancels in-flight agent_info lookups.
	closing     context.Context
	cancelFetch context.CancelFunc

	mu      sync.Mutex // guards the fields below
	cache   map[tokenKey]cacheEntry
	closed  bool           // set by Close: no lookup starts afterwards
	lookups sync.WaitGroup // AgentInfo goroutines waiting for a shared lookup
}

// New builds a Client from cfg (defaults applied, then validated) and registers its metrics
// on reg (nil: not registered).
func New(cfg Config, reg prometheus.Registerer) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, err := parseBaseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("gitlab: CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gitlab: CA file %s: no PEM certificates", cfg.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	transport := &http.Transport{
		// No Proxy: libraries do not read the environment.
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:        tlsConfig,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    10 * time.Second,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    100,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
	}
	c := &Client{
		cfg:       cfg,
		base:      base,
		userAgent: "kasd/" + cfg.Version,
		transport: transport,
		http: &http.Client{
			Transport: transport,
			// A redirect from GitLab's internal API is a misconfiguration; never follow it
			// (it would carry the agent token and the JWT to wherever it points).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		limiter: rate.NewLimiter(rate.Limit(cfg.RateLimit), cfg.Burst),
		metrics: m,
		cache:   make(map[tokenKey]cacheEntry),
	}
	c.closing, c.cancelFetch = context.WithCancel(context.Background())
	c.proxy = c.newModuleProxy()
	return c, nil
}

// Close cancels in-flight agent_info lookups, waits for their goroutines, and closes idle
// connections to GitLab. AgentInfo fails with shutting_down afterwards. Module requests in
// flight are not interrupted; they are bounded by their contexts. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancelFetch()
	c.lookups.Wait()
	c.transport.CloseIdleConnections()
	return nil
}

// signRequest sets the headers every request to GitLab carries: a fresh JWT and the
// User-Agent. It does not touch the agent token (setAgentToken).
func (c *Client) signRequest(r *http.Request) error {
	token, err := c.mintJWT(time.Now())
	if err != nil {
		return err
	}
	r.Header.Set(JWTHeader, token)
	r.Header.Set("User-Agent", c.userAgent)
	return nil
}

// mintJWT returns a short-lived HS256 JWT as GitLab's Gitlab::Kas.verify_api_request expects.
func (c *Client) mintJWT(now time.Time) (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("gitlab: jti: %w", err)
	}
	claims := jwt.RegisteredClaims{
		Issuer:    JWTIssuer,
		Audience:  jwt.ClaimStrings{JWTAudience},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now.Add(-jwtSkew)),
		ExpiresAt: jwt.NewNumericDate(now.Add(jwtValidFor)),
		ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(c.cfg.AuthSecret)
	if err != nil {
		return "", fmt.Errorf("gitlab: sign JWT: %w", err)
	}
	return s, nil
}

// setAgentToken presents the agent token in every header a GitLab version reads it from
// (lib/gitlab/auth/auth_finders.rb, cluster_agent_token_from_authorization_token): older
// GitLab reads "Authorization: Bearer" only; then Authorization if present, else
// Gitlab-Agentk-Api-Request; today's GitLab never reads Authorization, but
// Gitlab-Agentk-Api-Request if present, else Gitlab-Agent-Api-Request (the header it moves
// to). All three are set, to the same token, replacing whatever the request had: a token in
// any of them that kasd did not put there would be the one GitLab acts on.
func setAgentToken(h http.Header, token string) {
	h.Set("Authorization", "Bearer "+token)
	h.Set(AgentkTokenHeader, token)
	h.Set(AgentTokenHeader, token)
}

// overloaded is the error returned when the client-side rate limit refuses a request.
func overloaded(wait time.Duration) error {
	return &api.Error{
		Code:       api.CodeOverloaded,
		Message:    "rate limit for requests to GitLab exceeded",
		RetryAfter: wait,
	}
}

// waitRateLimit waits for the rate limiter. A wait longer than RateLimitMaxWait or beyond
// ctx's deadline is refused at once with api.CodeOverloaded and counted.
func (c *Client) waitRateLimit(ctx context.Context) error {
	now := time.Now()
	r := c.limiter.ReserveN(now, 1)
	if !r.OK() {
		c.metrics.rateLimited.Inc()
		return overloaded(0)
	}
	d := r.DelayFrom(now)
	if d == 0 {
		return nil
	}
	dl, hasDeadline := ctx.Deadline()
	if d > c.cfg.RateLimitMaxWait || (hasDeadline && now.Add(d).After(dl)) {
		r.CancelAt(now)
		c.metrics.rateLimited.Inc()
		return overloaded(d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctxError(ctx)
	}
}

// ctxError turns a done context into a typed error.
func ctxError(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return &api.Error{Code: api.CodeDeadlineExceeded, Message: "deadline exceeded waiting for GitLab", Err: err}
	}
	return &api.Error{Code: api.CodeClientCanceled, Message: "the caller went away before GitLab answered", Err: err}
}
