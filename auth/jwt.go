package auth

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/api"
)

// DefaultAudience is the audience of client JWTs: the one GitLab uses in the
// tokens it mints for kas.
const DefaultAudience = "gitlab-kas"

const (
	// DefaultMaxValidity is Verifier.MaxValidity's default.
	DefaultMaxValidity = time.Hour
	// DefaultLeeway is Verifier.Leeway's default.
	DefaultLeeway = 5 * time.Second
	// MaxTokenBytes is the longest bearer token accepted; longer ones are
	// refused before parsing.
	MaxTokenBytes = 8 << 10
)

// signingMethod is the only algorithm minted and accepted.
var signingMethod = jwt.SigningMethodHS256

// AnyAgent in ClientClaims.Agents allows every agent.
const AnyAgent = "*"

// Impersonation asks the agent to act as another Kubernetes identity.
type Impersonation struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
}

// ClientClaims are the claims of a client JWT for kasd's HTTP API.
type ClientClaims struct {
	jwt.RegisteredClaims
	// Agents limits which agents the token reaches: nil (claim absent) or a
	// list containing "*" allows any agent; otherwise only the listed ids.
	// A present but empty list ("agents": []) allows none; Mint refuses to
	// write one because JSON omitempty would turn it into "any agent".
	Agents []string `json:"agents,omitempty"`
	// Impersonate, if set, is passed to the agent (request metadata
	// impersonate-user / impersonate-group). Verify refuses it without User.
	Impersonate *Impersonation `json:"impersonate,omitempty"`
}

// AllowsAgent reports whether the token may reach agent id.
func (c *ClientClaims) AllowsAgent(id string) bool {
	if c.Agents == nil {
		return true
	}
	return slices.Contains(c.Agents, AnyAgent) || slices.Contains(c.Agents, id)
}

// Verifier checks client JWTs. Only Key is required; the other fields have
// defaults. A Verifier must not be changed once in use; it is safe for
// concurrent use.
type Verifier struct {
	// Key is the HMAC key (the decoded secret file). Verify refuses every
	// token while it is empty.
	Key []byte
	// Audience must be one of the token's aud values. Default DefaultAudience.
	Audience string
	// MaxValidity bounds how long a token may be valid: tokens whose exp is
	// further than this (plus Leeway) in the future, or whose exp-iat is
	// longer than this, are refused. Zero or negative means
	// DefaultMaxValidity (1h).
	MaxValidity time.Duration
	// Leeway is the clock skew allowed on exp, nbf and iat. Zero means
	// DefaultLeeway (5s); negative means none.
	Leeway time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Cache, if set, remembers verified tokens (see VerifiedCache). Claims returned from the
	// cache are shared: callers must not modify them.
	Cache *VerifiedCache
}

func (v *Verifier) audience() string {
	if v.Audience == "" {
		return DefaultAudience
	}
	return v.Audience
}

func (v *Verifier) maxValidity() time.Duration {
	if v.MaxValidity <= 0 {
		return DefaultMaxValidity
	}
	return v.MaxValidity
}

func (v *Verifier) leeway() time.Duration {
	switch {
	case v.Leeway == 0:
		return DefaultLeeway
	case v.Leeway < 0:
		return 0
	}
	return v.Leeway
}

func (v *Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

func unauthenticated(msg string, err error) *api.Error {
	return &api.Error{Code: api.CodeUnauthenticated, Message: msg, Err: err}
}

// Verify checks a client JWT and returns its claims. The token must be HS256
// signed with Key (checked before any claim), its aud must contain Audience,
// exp is required, nbf and iat are honoured when present (all with Leeway),
// and it must not be valid for longer than MaxValidity. Every failure is an
// *api.Error with code api.CodeUnauthenticated, a short reason as Message and
// the jwt error, if any, as Err; none of them contains the token.
func (v *Verifier) Verify(token string) (*ClientClaims, error) {
	if v.Cache != nil {
		if c := v.Cache.get(token, v.now(), v.leeway()); c != nil {
			return c, nil
		}
	}
	claims, err := v.verify(token)
	if err == nil && v.Cache != nil {
		v.Cache.put(token, claims)
	}
	return claims, err
}

func (v *Verifier) verify(token string) (*ClientClaims, error) {
	if len(v.Key) == 0 {
		return nil, unauthenticated("verifier has no key", nil)
	}
	if token == "" {
		return nil, unauthenticated("empty token", nil)
	}
	if len(token) > MaxTokenBytes {
		return nil, unauthenticated(fmt.Sprintf("token longer than %d bytes", MaxTokenBytes), nil)
	}
	leeway := v.leeway()
	now := v.now()
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{signingMethod.Alg()}),
		jwt.WithAudience(v.audience()),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithStrictDecoding(),
	)
	claims := new(ClientClaims)
	tok, err := p.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		// WithValidMethods already refused every other alg; checking the
		// method here too keeps the key from ever reaching another one.
		if t.Method != signingMethod {
			return nil, errors.New("signing method not allowed")
		}
		return v.Key, nil
	})
	if err != nil {
		return nil, unauthenticated(verifyFailure(tok, claims, err), err)
	}
	// The signature and the standard claims are good from here on.
	maxV := v.maxValidity()
	exp := claims.ExpiresAt.Time // not nil: WithExpirationRequired
	if exp.Sub(now) > maxV+leeway || (claims.IssuedAt != nil && exp.Sub(claims.IssuedAt.Time) > maxV) {
		return nil, unauthenticated(fmt.Sprintf("token valid for longer than %v", maxV), nil)
	}
	if claims.Impersonate != nil && claims.Impersonate.User == "" {
		return nil, unauthenticated("impersonate claim without user", nil)
	}
	return claims, nil
}

// verifyFailure says briefly why ParseWithClaims refused a token. Claims
// are only looked at when the error says the signature was good
// (ErrTokenInvalidClaims is returned only after it was checked).
func verifyFailure(tok *jwt.Token, claims *ClientClaims, err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case tok != nil && tok.Header["alg"] != signingMethod.Alg():
		return "signing method not allowed (only " + signingMethod.Alg() + ")"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case !errors.Is(err, jwt.ErrTokenInvalidClaims):
		return "unverifiable token"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && claims.ExpiresAt == nil:
		return "exp claim required"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "token issued in the future"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && len(claims.Audience) == 0:
		return "aud claim required"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	}
	return "invalid claims"
}

// Mint signs claims with key (HS256). It refuses an empty key, and an Agents
// list that is empty but not nil: omitempty would drop it and the token would
// allow every agent.
func Mint(key []byte, claims ClientClaims) (string, error) {
	if len(key) == 0 {
		return "", errors.New("auth: mint: empty key")
	}
	if claims.Agents != nil && len(claims.Agents) == 0 {
		return "", errors.New("auth: mint: Agents is empty but not nil, which would allow every agent; use nil for any agent")
	}
	return jwt.NewWithClaims(signingMethod, claims).SignedString(key)
}

// BearerToken returns the token of the request's "Authorization: Bearer X"
// header (scheme case-insensitive). A missing header, more than one, another
// scheme, an empty token or one longer than MaxTokenBytes is an *api.Error
// with code api.CodeUnauthenticated; the message never quotes the header.
func BearerToken(r *http.Request) (string, error) {
	values := r.Header.Values("Authorization")
	switch len(values) {
	case 0:
		return "", unauthenticated("missing Authorization header", nil)
	case 1:
	default:
		return "", unauthenticated("more than one Authorization header", nil)
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", unauthenticated("Authorization header is not \"Bearer <token>\"", nil)
	}
	token = strings.TrimSpace(token)
	switch {
	case token == "":
		return "", unauthenticated("empty bearer token", nil)
	case len(token) > MaxTokenBytes:
		return "", unauthenticated(fmt.Sprintf("bearer token longer than %d bytes", MaxTokenBytes), nil)
	case strings.ContainsAny(token, " \t"):
		return "", unauthenticated("malformed bearer token", nil)
	}
	return token, nil
}

// VerifiedCache remembers tokens that verified, so that a client sending the same JWT with every
// request (GitLab does) costs a map lookup instead of a JSON decode and an HMAC. Only successful
// verifications are kept; a hit still checks exp and nbf against the clock, so a cached token
// expires exactly when it would have. It holds at most Size tokens (a bound on what clients
// control); when full, an arbitrary entry is dropped. Use one cache per Verifier (per key).
type VerifiedCache struct {
	Size int // default 4096

	mu      sync.Mutex // guards entries
	entries map[string]*ClientClaims
}

func (c *VerifiedCache) get(token string, now time.Time, leeway time.Duration) *ClientClaims {
	c.mu.Lock()
	claims := c.entries[token]
	c.mu.Unlock()
	if claims == nil {
		return nil
	}
	if !now.Before(claims.ExpiresAt.Time.Add(leeway)) ||
		(claims.NotBefore != nil && now.Add(leeway).Before(claims.NotBefore.Time)) {
		c.mu.Lock()
		delete(c.entries, token)
		c.mu.Unlock()
		return nil
	}
	return claims
}

func (c *VerifiedCache) put(token string, claims *ClientClaims) {
	size := c.Size
	if size <= 0 {
		size = 4096
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]*ClientClaims{}
	}
	if len(c.entries) >= size {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[token] = claims
}
