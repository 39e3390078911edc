// Package gitlab is kasd's client to GitLab's internal API for kas.
//
// # Requests
//
// Every request kasd sends to GitLab carries
//
//	Gitlab-Kas-Api-Request: <JWT>   HS256 over the decoded --gitlab-auth-secret-file,
//	                                iss "gitlab-kas", aud ["gitlab"], iat now, nbf now-5s,
//	                                exp now+5s, a random jti; minted per request
//	User-Agent: kasd/<version>
//	Authorization: Bearer <agent token>
//	Gitlab-Agentk-Api-Request: <agent token>
//	Gitlab-Agent-Api-Request: <agent token>
//
// which is what GitLab checks (lib/gitlab/kas.rb verify_api_request, then the agent token in
// api/internal/kubernetes.rb). The token goes in all three headers because GitLab versions
// read it from different ones (lib/gitlab/auth/auth_finders.rb): older ones from
// Authorization only, then Authorization if present else Gitlab-Agentk-Api-Request, today's
// never from Authorization but from Gitlab-Agentk-Api-Request if present, else
// Gitlab-Agent-Api-Request. gitlabtest plays each (TokenLookup). A client-side rate limit (Config.RateLimit/Burst) bounds the
// load kasd puts on GitLab; a wait longer than Config.RateLimitMaxWait or the context's
// deadline fails at once with api.CodeOverloaded. Redirects are never followed.
//
// # Agent authentication
//
// Client.AgentInfo asks GET /api/v4/internal/kubernetes/agent_info. GitLab's 401 is
// api.CodeUnauthenticated, 403 api.CodeForbidden; anything that is not an answer about the
// token (5xx, other statuses, malformed JSON, timeouts, connection errors) is
// api.CodeAuthUnavailable, which is retryable and never cached, so "GitLab is down" is never
// mistaken for "bad token".
//
// # What is cached, and for how long
//
//   - agent_info answers only, keyed by sha256(token): admissions for Config.PositiveCacheTTL
//     (5m), 401/403 rejections for Config.NegativeCacheTTL (1m). Nothing else is cached.
//     A cached admission keeps being served while GitLab is down, until it expires.
//   - At most Config.MaxCacheEntries entries; tokens are peer-controlled.
//   - Concurrent lookups of one token share one request (singleflight). That request is bounded
//     by Config.Timeout and by Close, not by the first caller's context: each caller stops
//     waiting when its own context ends, while the goroutine that waits for the shared request
//     on its behalf (owned by the Client) ends with the request.
//
// # Modules
//
// Client.ModuleHandler proxies /modules/{module}/{path}?{query} to GitLab's
// /api/v4/internal/kubernetes/modules/{module}/{path}?{query} with an
// httputil.ReverseProxy: bodies stream both ways (nothing is buffered), 3xx answers are
// returned as they are, hop-by-hop headers and Cookie are dropped, Host is GitLab's. ValidateModule and
// CleanModulePath refuse anything that could reach outside the module's prefix; a refused
// request never reaches GitLab.
//
// # Invariants
//
//   - The agent token presented to GitLab for a module request is always the one in that
//     request's context (WithAgentToken); it is never cached per module, per connection in this
//     package, or taken from the incoming request: its Authorization, Gitlab-Agentk-Api-Request
//     and Gitlab-Agent-Api-Request headers are replaced.
//   - No agent token, JWT or secret is ever logged or put into an error message. Errors carry
//     the GitLab URL and status at most.
//   - Client owns one goroutine per AgentInfo caller waiting for a GitLab lookup; each ends
//     within Config.Timeout. Close cancels the lookups, waits for those goroutines, and closes
//     idle connections; AgentInfo fails with api.CodeShuttingDown afterwards.
package gitlab
