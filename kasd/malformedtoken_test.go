package kasd_test

import (
	"context"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
	"github.com/qkas/qkas/kasd"
)

// A made-up agent token that GitLab cannot have issued (a control byte: not even a header
// value) is refused as unauthenticated without asking GitLab, so it counts against its source's
// failure budget like any wrong token. It used to fail as auth_unavailable ("GitLab down"),
// which the budget gives back: one source could repeat it without limit, each attempt spending
// a token of kasd's GitLab rate limit, until a real agent from another source was refused
// overloaded (docs/gitlab.md, --agent-auth-failure-burst).
func TestMalformedTokenCountsAgainstSource(t *testing.T) {
	const burst, attempts = 5, 50
	gl := gitlabtest.New(t, glSecret)
	good := "good-agent-token-0123456789abcdef"
	gl.AddAgent(good, gitlab.AgentInfo{AgentID: 7, ProjectID: 1, AgentName: "prod"})
	glReg := prometheus.NewRegistry()
	// A budget of 50 requests to GitLab, refilled after ~1000 s.
	client, err := gitlab.New(gitlab.Config{URL: gl.URL, AuthSecret: glSecret, Version: "test", RateLimit: 0.001, Burst: attempts}, glReg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	limReg := prometheus.NewRegistry()
	auth, err := kasd.NewSourceLimitedAuth(kasd.GitLabAuth{Client: client}, kasd.SourceLimits{Burst: burst, Rate: 1e-6}, limReg)
	if err != nil {
		t.Fatal(err)
	}
	attacker := kasd.WithAgentSource(context.Background(), &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1})
	codes := map[api.Code]int{}
	for i := range attempts {
		_, err := auth.Authenticate(attacker, "made-up\ntoken-"+string(rune('a'+i%26)))
		codes[api.CodeOf(err)]++
	}
	t.Logf("attacker's answers: %v; GitLab saw %d agent_info calls; kasd_gitlab_requests_total{agent_info,error} = %v",
		codes, gl.AgentInfoCalls(), counter(t, glReg, "kasd_gitlab_requests_total", map[string]string{"endpoint": "agent_info", "code": "error"}))
	if n := counter(t, limReg, "kasd_agent_auth_source_refusals_total", nil); n < attempts-burst {
		t.Errorf("kasd_agent_auth_source_refusals_total = %v after %d made-up tokens from one source, want >= %d (the source's burst is %d)", n, attempts, attempts-burst, burst)
	}
	real := kasd.WithAgentSource(context.Background(), &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 1})
	if id, err := auth.Authenticate(real, good); err != nil || id != "7" {
		t.Errorf("real agent from another source: %q %v, want admitted as 7 (the made-up tokens spent kasd's GitLab rate limit)", id, err)
	}
}
