package gitlab

import (
	"errors"
	"fmt"
	"log"
	"net/url"
	"time"
)

// Defaults and limits. Each one bounds something GitLab or a peer controls.
const (
	// MinAuthSecretLen is the minimum length of the decoded --gitlab-auth-secret-file contents.
	// GitLab generates 32 random bytes.
	MinAuthSecretLen = 32

	defaultVersion          = "dev"
	defaultTimeout          = 10 * time.Second
	defaultRateLimit        = 100
	defaultBurst            = 200
	defaultRateLimitMaxWait = time.Second
	defaultPositiveCacheTTL = 5 * time.Minute
	defaultNegativeCacheTTL = time.Minute
	defaultMaxCacheEntries  = 10000

	// maxAgentInfoBytes bounds the agent_info answer we decode.
	maxAgentInfoBytes = 1 << 20
	// maxModulePathLen bounds the escaped module path accepted from an agent.
	maxModulePathLen = 4096
	// maxModuleNameLen bounds a module name (also the metrics label value).
	maxModuleNameLen = 64
	// maxModuleLabels bounds the number of distinct module label values in metrics;
	// further modules are counted under "other".
	maxModuleLabels = 32
)

// Config configures a Client. The zero value of each optional field means its default;
// WithDefaults fills them in and Validate checks the result. New does both.
type Config struct {
	// URL is GitLab's base URL, e.g. https://gitlab.example.com (required). A path is kept
	// (relative URL root). http is allowed (tests, sidecars).
	URL string
	// AuthSecret is the decoded contents of --gitlab-auth-secret-file, at least 32 bytes (required).
	// It signs the Gitlab-Kas-Api-Request JWT; it is never logged.
	AuthSecret []byte
	// CAFile is an optional PEM file with extra CAs trusted for GitLab's TLS, added to the
	// system pool.
	CAFile string
	// Version goes into the User-Agent "kasd/<version>". Default "dev".
	Version string
	// Timeout bounds one agent_info request, including the rate limiter wait. Default 10s.
	// Module requests are streaming and bounded by the caller's context only.
	Timeout time.Duration
	// RateLimit is the number of requests per second kasd sends to GitLab. Default 100.
	RateLimit float64
	// Burst is the rate limiter's burst. Default 200.
	Burst int
	// RateLimitMaxWait is the longest a request waits for the rate limiter; a longer wait
	// (or one beyond the context's deadline) fails with api.CodeOverloaded. Default 1s.
	RateLimitMaxWait time.Duration
	// PositiveCacheTTL is how long an admitted agent token is cached. Default 5m.
	PositiveCacheTTL time.Duration
	// NegativeCacheTTL is how long a token GitLab rejected (401/403) is cached. Default 1m.
	NegativeCacheTTL time.Duration
	// MaxCacheEntries bounds the agent_info cache (tokens are peer-controlled). When full,
	// expired entries are dropped first, then arbitrary ones. Default 10000.
	MaxCacheEntries int
	// ErrorLog, if set, takes the modules proxy's own error lines (httputil.ReverseProxy's:
	// a body copy that failed), which otherwise go to stderr as plain text.
	ErrorLog *log.Logger
	// Now is the clock for cache expiry. Default time.Now. The JWT always uses the wall clock,
	// since GitLab checks it against its own.
	Now func() time.Time
}

// WithDefaults returns c with every unset optional field set to its default.
func (c Config) WithDefaults() Config {
	if c.Version == "" {
		c.Version = defaultVersion
	}
	if c.Timeout == 0 {
		c.Timeout = defaultTimeout
	}
	if c.RateLimit == 0 {
		c.RateLimit = defaultRateLimit
	}
	if c.Burst == 0 {
		c.Burst = defaultBurst
	}
	if c.RateLimitMaxWait == 0 {
		c.RateLimitMaxWait = defaultRateLimitMaxWait
	}
	if c.PositiveCacheTTL == 0 {
		c.PositiveCacheTTL = defaultPositiveCacheTTL
	}
	if c.NegativeCacheTTL == 0 {
		c.NegativeCacheTTL = defaultNegativeCacheTTL
	}
	if c.MaxCacheEntries == 0 {
		c.MaxCacheEntries = defaultMaxCacheEntries
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate checks c. Call it on the result of WithDefaults.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("gitlab: URL is required"))
	} else if _, err := parseBaseURL(c.URL); err != nil {
		errs = append(errs, err)
	}
	if len(c.AuthSecret) < MinAuthSecretLen {
		// Never include the secret itself.
		errs = append(errs, fmt.Errorf("gitlab: auth secret is %d bytes, want at least %d", len(c.AuthSecret), MinAuthSecretLen))
	}
	if c.Timeout < 0 {
		errs = append(errs, errors.New("gitlab: Timeout must not be negative"))
	}
	if c.RateLimit < 0 {
		errs = append(errs, errors.New("gitlab: RateLimit must not be negative"))
	}
	if c.Burst < 0 {
		errs = append(errs, errors.New("gitlab: Burst must not be negative"))
	}
	if c.RateLimitMaxWait < 0 {
		errs = append(errs, errors.New("gitlab: RateLimitMaxWait must not be negative"))
	}
	if c.PositiveCacheTTL < 0 || c.NegativeCacheTTL < 0 {
		errs = append(errs, errors.New("gitlab: cache TTLs must not be negative"))
	}
	if c.MaxCacheEntries < 0 {
		errs = append(errs, errors.New("gitlab: MaxCacheEntries must not be negative"))
	}
	return errors.Join(errs...)
}

// parseBaseURL parses GitLab's base URL and drops a trailing slash from its path.
func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("gitlab: URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("gitlab: URL scheme %q, want http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("gitlab: URL has no host")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return nil, errors.New("gitlab: URL must not have user info, query or fragment")
	}
	for len(u.Path) > 0 && u.Path[len(u.Path)-1] == '/' {
		u.Path = u.Path[:len(u.Path)-1]
	}
	u.RawPath = ""
	return u, nil
}
