package auth

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/api"
)

// DefaultAudience is the audience of client JWTs: the one GitLab uses in the
// tokens it mints for kas.
const DefaultAudience = "gitlab-kas"

// DefaultIssuer is Verifier.Issuer's default and the iss that `kasctl jwt`
// writes unless told otherwise.
const DefaultIssuer = "qkas"

const (
	// DefaultMaxValidity is Verifier.MaxValidity's default.
	DefaultMaxValidity = time.Hour
	// DefaultLeeway is Verifier.Leeway's default.
	DefaultLeeway = 5 * time.Second
	// MaxTokenBytes is the longest bearer token accepted; longer ones are
	// refused before parsing.
	MaxTokenBytes = 8 << 10
)

// signingMethod is the only algorithm minted, and the only one verified with
// Verifier.Key.
var signingMethod = jwt.SigningMethodHS256

// keySourceMethods are the algorithms verified with a Verifier's KeySource
// (never with Key): each names exactly one key type, which the KeySource
// returns only for keys of that type (see JWKS).
var keySourceMethods = []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg(), jwt.SigningMethodEdDSA.Alg()}

// KeySource supplies the public keys of asymmetric client JWTs (RS256, ES256,
// EdDSA), such as a JWKS published by an OIDC provider ([JWKS]).
type KeySource interface {
	// Issuer is the iss every token verified with these keys must carry
	// (not empty).
	Issuer() string
	// Audience, if not empty, replaces Verifier.Audience for these tokens.
	Audience() string
	// VerificationKeys returns the keys that may verify a token whose header
	// has this kid ("" when absent) and alg (one of RS256, ES256, EdDSA). Each
	// key must be of the one Go type alg verifies with (*rsa.PublicKey,
	// *ecdsa.PublicKey on P-256, ed25519.PublicKey): never a []byte. None
	// found is an error.
	VerificationKeys(kid, alg string) ([]crypto.PublicKey, error)
}

// AnyAgent, alone in ClientClaims.Agents (["*"]), allows every agent; a
// Verifier accepts it only with AllowAnyAgent.
const AnyAgent = "*"

// Impersonation asks the agent to act as another Kubernetes identity.
// Only user and groups are carried: agentd's kubernetes service sets
// Impersonate-User and Impersonate-Group from them. A token whose impersonate
// claim has any other field (Kubernetes' uid or extra, a typo) is refused by
// Verify rather than served with the field dropped, which would run the
// request with other rights than the token asked for.
type Impersonation struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
}

// ClientClaims are the claims of a client JWT for kasd's HTTP API.
type ClientClaims struct {
	jwt.RegisteredClaims
	// Agents lists the agent ids the token reaches; ["*"] reaches every agent
	// (accepted only by a Verifier with AllowAnyAgent). The claim is
	// required: Verify refuses a token without it, with null, with an empty
	// list or with "*" next to ids, and Mint refuses to write one.
	Agents []string `json:"agents"`
	// Impersonate, if set, is passed to the agent (request metadata
	// impersonate-user / impersonate-group). Verify refuses it without User.
	Impersonate *Impersonation `json:"impersonate,omitempty"`
}

// AllowsAgent reports whether the token may reach agent id. Claims without
// an agents list allow none (Verify never returns such claims).
func (c *ClientClaims) AllowsAgent(id string) bool {
	return slices.Contains(c.Agents, id) || (len(c.Agents) == 1 && c.Agents[0] == AnyAgent)
}

// Verifier checks client JWTs. Only Key is required; the other fields have
// defaults. A Verifier must not be changed once in use; it is safe for
// concurrent use.
type Verifier struct {
	// Key is the HMAC key (the decoded secret file). Verify refuses every
	// HS256 token while it is empty.
	Key []byte
	// Keys, if set, verifies RS256, ES256 and EdDSA tokens (a JWKS), which
	// must then carry Keys.Issuer() as iss instead of Issuer. The same claim
	// rules apply to them as to HS256 tokens. Default nil: HS256 only.
	Keys KeySource
	// Audience must be one of the token's aud values. Default DefaultAudience.
	Audience string
	// Issuer must be the token's iss (required). Default DefaultIssuer.
	Issuer string
	// AllowAnyAgent accepts tokens whose agents claim is ["*"] (every agent).
	// Default false: a token must list the agents it reaches.
	AllowAnyAgent bool
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

func (v *Verifier) issuer() string {
	if v.Issuer == "" {
		return DefaultIssuer
	}
	return v.Issuer
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
// signed with Key, or RS256/ES256/EdDSA signed with a key from Keys (checked
// before any claim), its header must not have crit, its aud must contain
// Audience (Keys.Audience() if set, for Keys' tokens), its iss must be Issuer
// (Keys.Issuer() for Keys' tokens), exp is required, nbf
// and iat are honoured when present (all with Leeway; each a JSON number, never
// a string), it must not be valid for longer than MaxValidity, its agents claim
// must list agent ids (or be ["*"] with AllowAnyAgent), an impersonate claim
// may only carry user and groups, and no string in the header or the claims
// may hold a control character (CR, LF, NUL, any C0 or C1 code, DEL): they are
// refused here, before any of them can reach a header. Every failure is an
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

// methods returns the algorithms Verify accepts.
func (v *Verifier) methods() []string {
	if v.Keys == nil {
		return []string{signingMethod.Alg()}
	}
	return append([]string{signingMethod.Alg()}, keySourceMethods...)
}

// headerAlg returns the alg of the token's header, or "" if it cannot be
// read (the parser then says why). It only chooses which key source, issuer
// and audience apply; the signature is checked against that one alg.
func headerAlg(token string) string {
	h, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return ""
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(b, &hdr) != nil {
		return ""
	}
	return hdr.Alg
}

func (v *Verifier) verify(token string) (*ClientClaims, error) {
	if len(v.Key) == 0 && v.Keys == nil {
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
	// One alg per parse: HS256 with Key, or one of keySourceMethods with a key
	// from Keys; a token cannot get a key meant for another algorithm.
	alg, audience, issuer := signingMethod.Alg(), v.audience(), v.issuer()
	if a := headerAlg(token); v.Keys != nil && slices.Contains(keySourceMethods, a) {
		alg, issuer = a, v.Keys.Issuer()
		if aud := v.Keys.Audience(); aud != "" {
			audience = aud
		}
	}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{alg}),
		jwt.WithAudience(audience),
		jwt.WithIssuer(issuer),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithStrictDecoding(),
	)
	claims := new(ClientClaims)
	tok, err := p.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		// WithValidMethods already refused every other alg; checking the
		// method here too keeps each key from ever reaching another one.
		switch {
		case t.Method.Alg() != alg:
			return nil, errors.New("signing method not allowed")
		case t.Method == signingMethod:
			if len(v.Key) == 0 {
				return nil, errors.New("no HS256 key configured")
			}
			return v.Key, nil
		}
		kid, _ := t.Header["kid"].(string)
		keys, err := v.Keys.VerificationKeys(kid, alg)
		if err != nil {
			return nil, err
		}
		set := jwt.VerificationKeySet{}
		for _, k := range keys {
			if _, sym := k.([]byte); sym {
				return nil, errors.New("key source returned a symmetric key")
			}
			set.Keys = append(set.Keys, k)
		}
		return set, nil
	})
	if err != nil {
		return nil, unauthenticated(verifyFailure(tok, claims, err, v.methods()), err)
	}
	// The signature and the standard claims are good from here on.
	if msg := checkHeader(tok.Header); msg != "" {
		return nil, unauthenticated(msg, nil)
	}
	if msg := v.checkRawClaims(token); msg != "" {
		return nil, unauthenticated(msg, nil)
	}
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
func verifyFailure(tok *jwt.Token, claims *ClientClaims, err error, methods []string) string {
	var alg string
	if tok != nil {
		alg, _ = tok.Header["alg"].(string)
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case tok != nil && !slices.Contains(methods, alg):
		return "signing method not allowed (only " + strings.Join(methods, ", ") + ")"
	case errors.Is(err, jwt.ErrTokenUnverifiable) && alg != signingMethod.Alg():
		return "no key for the token's kid and alg"
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
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && claims.Issuer == "":
		return "iss claim required"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	}
	return "invalid claims"
}

// Mint signs claims with key (HS256). It refuses what Verify would refuse
// whatever the time: an empty key, no Issuer, an Agents list that is empty or
// has "*" next to ids, an agent id that is not valid, and control characters
// in the claims.
func Mint(key []byte, claims ClientClaims) (string, error) {
	if len(key) == 0 {
		return "", errors.New("auth: mint: empty key")
	}
	if claims.Issuer == "" {
		return "", errors.New("auth: mint: Issuer is required (kasd checks iss; DefaultIssuer unless configured otherwise)")
	}
	if msg := checkAgents(claims.Agents, true); msg != "" {
		return "", errors.New("auth: mint: " + msg)
	}
	tok := jwt.NewWithClaims(signingMethod, claims)
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	if msg := checkControl(payload); msg != "" {
		return "", errors.New("auth: mint: " + msg)
	}
	return tok.SignedString(key)
}

// checkHeader refuses a header with crit (RFC 7515 4.1.11: a recipient must
// refuse extensions it does not understand, and qkas understands none) or a
// control character in any of its strings.
func checkHeader(h map[string]any) string {
	if _, ok := h["crit"]; ok {
		return "crit header not supported"
	}
	for k, val := range h {
		if hasControl(k) || anyHasControl(val) {
			return "control character in the token header"
		}
	}
	return ""
}

// claimNames are the claims ClientClaims decodes (its own and jwt.RegisteredClaims').
var claimNames = []string{"agents", "impersonate", "iss", "sub", "aud", "exp", "nbf", "iat", "jti"}

// checkRawClaims checks what the typed claims cannot show, on the JSON of the
// (already signature-checked) payload: the types of exp, nbf and iat, the
// presence and shape of agents and impersonate, and control characters.
func (v *Verifier) checkRawClaims(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "malformed token"
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "malformed token"
	}
	if msg := checkControl(payload); msg != "" {
		return msg
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil {
		return "malformed token"
	}
	// encoding/json fills ClientClaims matching names without regard to case, the last
	// match winning: "Agents" or "EXP" would replace the claim checked below unchecked.
	for k := range raw {
		for _, name := range claimNames {
			if k != name && strings.EqualFold(k, name) {
				return "claim " + strconv.Quote(k) + " differs from " + name + " only in case; claim names are case-sensitive"
			}
		}
	}
	for _, name := range []string{"exp", "nbf", "iat"} {
		if r, ok := raw[name]; ok && !isJSONNumber(r) {
			return name + " claim must be a number (seconds since the epoch)"
		}
	}
	ra, ok := raw["agents"]
	if !ok || bytes.Equal(bytes.TrimSpace(ra), []byte("null")) {
		return `agents claim required (the agent ids the token reaches, or ["*"] where kasd allows every agent)`
	}
	var agents []string
	if err := json.Unmarshal(ra, &agents); err != nil {
		return "agents claim must be a list of agent ids"
	}
	if msg := checkAgents(agents, v.AllowAnyAgent); msg != "" {
		return msg
	}
	if ri, ok := raw["impersonate"]; ok {
		var imp map[string]json.RawMessage
		if err := json.Unmarshal(ri, &imp); err != nil || imp == nil {
			return "impersonate claim must be an object"
		}
		for k := range imp {
			switch k {
			case "user", "groups":
			case "uid", "extra":
				return "impersonate claim field " + k + " is not supported (only user and groups); the token is refused rather than served without it"
			default:
				return "impersonate claim has an unknown field"
			}
		}
	}
	return ""
}

// checkAgents checks an agents list: not empty, "*" only alone and only if
// anyAgent, every other entry a valid agent id.
func checkAgents(agents []string, anyAgent bool) string {
	switch {
	case len(agents) == 0:
		return `agents claim must not be empty (list agent ids, or ["*"] where kasd allows every agent)`
	case len(agents) == 1 && agents[0] == AnyAgent:
		if !anyAgent {
			return `agents claim ["*"] (every agent) is not allowed by this kasd (--api-allow-wildcard)`
		}
		return ""
	}
	for i, id := range agents {
		if id == AnyAgent {
			return `agents claim: "*" must be alone`
		}
		if ValidateAgentID(id) != nil {
			return fmt.Sprintf("agents claim: entry %d is not a valid agent id", i)
		}
	}
	return ""
}

// isJSONNumber reports whether r is a JSON number (not a string, not null).
func isJSONNumber(r json.RawMessage) bool {
	r = bytes.TrimSpace(r)
	return len(r) > 0 && (r[0] == '-' || ('0' <= r[0] && r[0] <= '9'))
}

// checkControl reports a control character in any string (names included)
// of the JSON document doc, naming the top-level claim it is in but never
// quoting it.
func checkControl(doc []byte) string {
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		return "malformed token"
	}
	for k, val := range m {
		if hasControl(k) {
			return "control character in a claim name"
		}
		if anyHasControl(val) {
			return fmt.Sprintf("control character in claim %s", k)
		}
	}
	return ""
}

func anyHasControl(v any) bool {
	switch v := v.(type) {
	case string:
		return hasControl(v)
	case []any:
		return slices.ContainsFunc(v, anyHasControl)
	case map[string]any:
		for k, e := range v {
			if hasControl(k) || anyHasControl(e) {
				return true
			}
		}
	}
	return false
}

// hasControl reports a C0 or C1 control character or DEL (CR, LF and NUL
// among them) in s.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
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
