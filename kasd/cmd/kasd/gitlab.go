package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/internal/httpserve"
	"github.com/qkas/qkas/kasd"
)

// gitlabOptions are the --gitlab-* flags.
type gitlabOptions struct {
	url              string
	authSecretFile   string
	caFile           string
	cacheTTL         time.Duration
	negativeCacheTTL time.Duration
	rateLimit        float64
}

func (g *gitlabOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "gitlab-url", "", "GitLab's base URL; when set, agents authenticate through GitLab (agent_info) and may reach GitLab's modules endpoint. Not allowed together with --agent-tokens-file")
	fs.StringVar(&g.authSecretFile, "gitlab-auth-secret-file", "", "base64 secret shared with GitLab (its .gitlab_kas_secret, 32 bytes decoded) that signs the Gitlab-Kas-Api-Request JWT")
	fs.StringVar(&g.caFile, "gitlab-ca-file", "", "extra CA certificate(s) (PEM) to trust for GitLab's TLS, added to the system roots")
	fs.DurationVar(&g.cacheTTL, "gitlab-cache-ttl", 5*time.Minute, "how long an agent token GitLab admitted is cached (and still admitted while GitLab is down)")
	fs.DurationVar(&g.negativeCacheTTL, "gitlab-negative-cache-ttl", time.Minute, "how long an agent token GitLab rejected (401/403) is cached")
	fs.Float64Var(&g.rateLimit, "gitlab-rate-limit", 100, "requests per second kasd sends to GitLab (agent_info and modules together)")
}

// agentAuth chooses how agents authenticate: through GitLab (--gitlab-url) or a tokens file
// (--agent-tokens-file), never both. In GitLab mode it also returns the modules handler and the
// client to close at exit (nil otherwise); the client's metrics go to reg.
func agentAuth(o *options, reg prometheus.Registerer, log zerolog.Logger) (kasd.AgentAuthenticator, http.Handler, *gitlab.Client, error) {
	g := &o.gitlab
	switch {
	case g.url != "" && o.agentTokensFile != "":
		return nil, nil, nil, errors.New("--gitlab-url and --agent-tokens-file are mutually exclusive: agents authenticate either through GitLab or with a tokens file")
	case g.url == "" && o.agentTokensFile == "":
		return nil, nil, nil, errors.New("--agent-tokens-file (standalone; create entries with 'kasctl agent-token NAME') or --gitlab-url (GitLab mode) is required")
	case g.url == "":
		if g.authSecretFile != "" || g.caFile != "" {
			return nil, nil, nil, errors.New("--gitlab-auth-secret-file and --gitlab-ca-file need --gitlab-url")
		}
		tokens, err := auth.LoadTokenStore(o.agentTokensFile)
		if err != nil {
			return nil, nil, nil, err
		}
		return kasd.TokenFileAuth{Store: tokens}, nil, nil, nil
	}
	if g.authSecretFile == "" {
		return nil, nil, nil, errors.New("--gitlab-url needs --gitlab-auth-secret-file (GitLab's .gitlab_kas_secret)")
	}
	// --gitlab-cache-ttl, --gitlab-negative-cache-ttl and --gitlab-rate-limit are positive and
	// finite (parseFlags): the library reads 0 as its default.
	secret, err := auth.ReadSecretFile(g.authSecretFile)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--gitlab-auth-secret-file: %w", err)
	}
	client, err := gitlab.New(gitlab.Config{
		URL:              g.url,
		AuthSecret:       secret,
		CAFile:           g.caFile,
		Version:          version,
		RateLimit:        g.rateLimit,
		Burst:            max(1, int(2*g.rateLimit)),
		PositiveCacheTTL: g.cacheTTL,
		NegativeCacheTTL: g.negativeCacheTTL,
		ErrorLog:         httpserve.ErrorLog(log),
	}, reg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--gitlab-*: %w", err)
	}
	return kasd.GitLabAuth{Client: client}, client.ModuleHandler(), client, nil
}
