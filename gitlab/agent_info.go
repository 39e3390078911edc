package gitlab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/qkas/qkas/api"
)

// AgentInfo is GitLab's answer to agent_info for a valid agent token. Fields kasd does not
// interpret are kept raw.
type AgentInfo struct {
	ProjectID        int64           `json:"project_id"`
	AgentID          int64           `json:"agent_id"`
	AgentName        string          `json:"agent_name"`
	DefaultBranch    string          `json:"default_branch"`
	GitalyInfo       json.RawMessage `json:"gitaly_info,omitempty"`
	GitalyRepository json.RawMessage `json:"gitaly_repository,omitempty"`
}

// ID returns the agent id used in kasd's routing: the decimal AgentID.
func (a *AgentInfo) ID() string { return strconv.FormatInt(a.AgentID, 10) }

// clone returns a deep copy so that callers cannot modify a cached answer.
func (a *AgentInfo) clone() *AgentInfo {
	b := *a
	b.GitalyInfo = bytes.Clone(a.GitalyInfo)
	b.GitalyRepository = bytes.Clone(a.GitalyRepository)
	return &b
}

// tokenKey is sha256(agent token): the cache and singleflight key, so that tokens themselves
// are not kept.
type tokenKey [sha256.Size]byte

// cacheEntry is a cached agent_info answer: either info (admitted) or err (rejected by
// GitLab with 401/403).
type cacheEntry struct {
	info    *AgentInfo
	err     error
	expires time.Time
}

// MaxAgentTokenBytes is the longest agent token kasd sends to GitLab. GitLab's agent tokens
// (glagent-…) are a few dozen bytes.
const MaxAgentTokenBytes = 1024

// checkAgentToken refuses, as unauthenticated, a token GitLab cannot have issued: longer than
// MaxAgentTokenBytes, or with a byte outside printable ASCII (a space, a control byte: not a
// header value, or not one token).
func checkAgentToken(tok string) error {
	if len(tok) > MaxAgentTokenBytes {
		return api.Errorf(api.CodeUnauthenticated, "agent token longer than %d bytes", MaxAgentTokenBytes)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] > '~' {
			return api.Errorf(api.CodeUnauthenticated, "agent token has a byte outside printable ASCII at offset %d", i)
		}
	}
	return nil
}

// PositiveCacheTTL is how long an admitted agent token is cached (Config.PositiveCacheTTL).
func (c *Client) PositiveCacheTTL() time.Duration { return c.cfg.PositiveCacheTTL }

// AgentInfo authenticates an agent token with GitLab and returns the agent's info.
//
// Errors are *api.Error: CodeUnauthenticated (GitLab answered 401, or the token cannot be one
// of GitLab's: checkAgentToken, never sent), CodeForbidden (403),
// CodeAuthUnavailable (GitLab down, 5xx, unexpected answer, timeout: retryable, never cached),
// CodeOverloaded (client-side rate limit), CodeDeadlineExceeded (ctx expired first).
// Answers are cached by sha256(token) (admitted: PositiveCacheTTL, 401/403: NegativeCacheTTL);
// concurrent lookups of one token share one request to GitLab. A cached admission keeps being
// served while GitLab is down, until it expires.
func (c *Client) AgentInfo(ctx context.Context, agentToken string) (*AgentInfo, error) {
	return c.agentInfo(ctx, agentToken, false)
}

// AgentInfoFresh is AgentInfo asking GitLab whatever the cache holds (and caching its answer as
// AgentInfo does): for checking again a token admitted a cache TTL ago, whose cached admission
// may be as old as that (kasd's check of the connections in use).
func (c *Client) AgentInfoFresh(ctx context.Context, agentToken string) (*AgentInfo, error) {
	return c.agentInfo(ctx, agentToken, true)
}

func (c *Client) agentInfo(ctx context.Context, agentToken string, fresh bool) (*AgentInfo, error) {
	if agentToken == "" {
		return nil, api.Errorf(api.CodeUnauthenticated, "missing agent token")
	}
	if err := checkAgentToken(agentToken); err != nil {
		// Refused here, as GitLab would refuse it: a token that cannot be sent as a header
		// value would otherwise spend the rate limit and fail as auth_unavailable, which a
		// source's failure budget (kasd.SourceLimitedAuth) does not count.
		c.metrics.malformedTokens.Inc()
		return nil, err
	}
	key := tokenKey(sha256.Sum256([]byte(agentToken)))
	if !fresh {
		if info, err, ok := c.cacheGet(key); ok {
			return info, err
		}
	}
	c.metrics.cache.WithLabelValues(cacheMiss).Inc()

	// The shared lookup does not end when the first caller gives up: other callers may be
	// waiting for it. It is bounded by Timeout (and Close) instead. Each caller waits for it
	// in a goroutine that the Client owns, so Close can wait for every lookup to end.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, api.Errorf(api.CodeShuttingDown, "GitLab client closed")
	}
	c.lookups.Add(1)
	c.mu.Unlock()
	flightCtx := context.WithoutCancel(ctx)
	ch := make(chan lookupResult, 1)
	go func() {
		defer c.lookups.Done()
		v, err, _ := c.flights.Do(string(key[:]), func() (any, error) {
			// A flight that finished between our cache miss and Do has filled the cache.
			if e, ok := c.cacheLookup(key); ok && !fresh {
				return e.info, e.err
			}
			fctx, cancel := context.WithTimeout(flightCtx, c.cfg.Timeout)
			defer cancel()
			defer context.AfterFunc(c.closing, cancel)()
			info, err := c.fetchAgentInfo(fctx, agentToken)
			c.cacheStore(key, info, err)
			return info, err
		})
		ch <- lookupResult{v, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			return nil, res.err
		}
		return res.val.(*AgentInfo).clone(), nil
	case <-ctx.Done():
		return nil, ctxError(ctx)
	}
}

// lookupResult is a shared lookup's answer as one caller receives it.
type lookupResult struct {
	val any
	err error
}

// cacheGet looks key up, counts the result and returns a copy of a cached admission.
func (c *Client) cacheGet(key tokenKey) (*AgentInfo, error, bool) {
	e, ok := c.cacheLookup(key)
	if !ok {
		return nil, nil, false
	}
	if e.err != nil {
		c.metrics.cache.WithLabelValues(cacheNegativeHit).Inc()
		return nil, e.err, true
	}
	c.metrics.cache.WithLabelValues(cacheHit).Inc()
	return e.info.clone(), nil, true
}

func (c *Client) cacheLookup(key tokenKey) (cacheEntry, bool) {
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[key]
	if !ok {
		return cacheEntry{}, false
	}
	if !now.Before(e.expires) {
		delete(c.cache, key)
		return cacheEntry{}, false
	}
	return e, true
}

// cacheStore caches an admission, or a rejection by GitLab (401/403). Anything else
// (GitLab unavailable, rate limited) is not cached, so the next attempt asks GitLab again.
func (c *Client) cacheStore(key tokenKey, info *AgentInfo, err error) {
	var ttl time.Duration
	switch {
	case err == nil:
		ttl = c.cfg.PositiveCacheTTL
	case isCode(err, api.CodeUnauthenticated), isCode(err, api.CodeForbidden):
		ttl = c.cfg.NegativeCacheTTL
	default:
		return
	}
	if ttl <= 0 {
		return
	}
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.cache[key]; !ok && len(c.cache) >= c.cfg.MaxCacheEntries {
		c.evictLocked(now)
	}
	c.cache[key] = cacheEntry{info: info, err: err, expires: now.Add(ttl)}
}

// evictLocked makes room for one entry: it drops expired entries and, if none expired,
// an arbitrary one (map order). c.mu must be held.
func (c *Client) evictLocked(now time.Time) {
	n := 0
	for k, e := range c.cache {
		if !now.Before(e.expires) {
			delete(c.cache, k)
			n++
		}
	}
	if n > 0 {
		c.metrics.cacheEvictions.WithLabelValues(evictionExpired).Add(float64(n))
		return
	}
	for k := range c.cache {
		delete(c.cache, k)
		c.metrics.cacheEvictions.WithLabelValues(evictionFull).Inc()
		return
	}
}

func isCode(err error, code api.Code) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Code == code
}

// fetchAgentInfo asks GitLab once. It never returns the token in an error.
func (c *Client) fetchAgentInfo(ctx context.Context, agentToken string) (*AgentInfo, error) {
	if err := c.waitRateLimit(ctx); err != nil {
		if isCode(err, api.CodeOverloaded) {
			return nil, err
		}
		return nil, unavailable("waiting for rate limiter", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+AgentInfoPath, nil)
	if err != nil {
		return nil, unavailable("building request", err)
	}
	if err := c.signRequest(req); err != nil {
		return nil, unavailable("signing request", err)
	}
	setAgentToken(req.Header, agentToken)
	req.Header.Set("Accept", "application/json")

	start := time.Now()
	resp, err := c.http.Do(req)
	c.metrics.duration.WithLabelValues(endpointAgentInfo).Observe(time.Since(start).Seconds())
	if err != nil {
		c.metrics.requests.WithLabelValues(endpointAgentInfo, codeError).Inc()
		// *url.Error includes the URL, which holds no secret (the token is in a header).
		return nil, unavailable("request failed", err)
	}
	defer func() {
		// Drain a little so the connection can be reused, then close.
		_, _ = io.CopyN(io.Discard, resp.Body, 4096)
		_ = resp.Body.Close()
	}()
	c.metrics.requests.WithLabelValues(endpointAgentInfo, codeLabel(resp.StatusCode)).Inc()

	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, api.Errorf(api.CodeUnauthenticated, "agent token rejected by GitLab")
	case resp.StatusCode == http.StatusForbidden:
		return nil, api.Errorf(api.CodeForbidden, "agent forbidden by GitLab")
	default:
		e := unavailable(fmt.Sprintf("unexpected status %d", resp.StatusCode), nil)
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && ra > 0 && ra < 3600 {
			e.RetryAfter = time.Duration(ra) * time.Second
		}
		return nil, e
	}
	var info AgentInfo
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAgentInfoBytes+1))
	if err != nil {
		return nil, unavailable("reading answer", err)
	}
	if len(body) > maxAgentInfoBytes {
		c.metrics.badAnswers.WithLabelValues(endpointAgentInfo, "too_large").Inc()
		return nil, unavailable(fmt.Sprintf("answer over %d bytes", maxAgentInfoBytes), nil)
	}
	if err := json.Unmarshal(body, &info); err != nil {
		c.metrics.badAnswers.WithLabelValues(endpointAgentInfo, "malformed").Inc()
		return nil, unavailable("decoding answer", err)
	}
	if info.AgentID <= 0 {
		c.metrics.badAnswers.WithLabelValues(endpointAgentInfo, "no_agent_id").Inc()
		return nil, unavailable("answer has no agent_id", nil)
	}
	return &info, nil
}

// unavailable is the retryable "GitLab could not answer" error, distinct from a bad token.
func unavailable(what string, err error) *api.Error {
	return &api.Error{Code: api.CodeAuthUnavailable, Message: "GitLab unavailable: " + what, Err: err}
}
