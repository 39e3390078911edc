package kasd

import (
	"context"
	"time"

	"github.com/qkas/qkas/gitlab"
)

// GitLabAuth authenticates agents through GitLab's agent_info endpoint (GitLab mode): the
// agent id is GitLab's agent id in decimal. Errors are the gitlab client's *api.Error, passed on
// unchanged so the agent sees them in its Error frame: unauthenticated (GitLab answered 401)
// and forbidden (403) are permanent for the agent; auth_unavailable (GitLab down, 5xx, timeout)
// and overloaded (client-side rate limit) are retryable. A token GitLab admitted stays admitted
// from the client's cache while GitLab is down, until the cache entry expires.
type GitLabAuth struct {
	Client *gitlab.Client
}

// Authenticate implements AgentAuthenticator.
func (a GitLabAuth) Authenticate(ctx context.Context, token string) (string, error) {
	info, err := a.Client.AgentInfo(ctx, token)
	if err != nil {
		return "", err
	}
	return info.ID(), nil
}

// reverifyAfter implements reverifiedAuth: an admission lasts as long as GitLab's answer is
// cached (reverify.go).
func (a GitLabAuth) reverifyAfter() time.Duration { return a.Client.PositiveCacheTTL() }

// reverify implements reverifiedAuth.
func (a GitLabAuth) reverify(ctx context.Context, token string) (string, error) {
	info, err := a.Client.AgentInfoFresh(ctx, token) // not the cached admission, up to a TTL old
	if err != nil {
		return "", err
	}
	return info.ID(), nil
}
