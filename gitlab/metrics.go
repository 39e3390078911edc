package gitlab

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric label values.
const (
	endpointAgentInfo = "agent_info"
	endpointModules   = "modules"

	cacheHit         = "hit"
	cacheMiss        = "miss"
	cacheNegativeHit = "negative_hit"

	codeError       = "error"        // no HTTP answer from GitLab
	codeRateLimited = "rate_limited" // refused by kasd's own rate limit: never sent
	// labelInvalidModule is the module label of a request whose path named no valid module
	// (it cannot be a module name: those are [a-z0-9_-]).
	labelInvalidModule = "(invalid)"
	moduleLabelOther   = "other" // beyond maxModuleLabels distinct modules
	evictionExpired    = "expired"
	evictionFull       = "full"
)

type metrics struct {
	requests        *prometheus.CounterVec   // endpoint, code
	duration        *prometheus.HistogramVec // endpoint
	cache           *prometheus.CounterVec   // result
	cacheEvictions  *prometheus.CounterVec   // reason
	moduleRequests  *prometheus.CounterVec   // module, code
	rateLimited     prometheus.Counter
	malformedTokens prometheus.Counter
	badAnswers      *prometheus.CounterVec // endpoint, reason

	mu      sync.Mutex // guards the field below
	modules map[string]struct{}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_gitlab_requests_total",
			Help: "Requests kasd sent to GitLab, by endpoint and HTTP status (\"error\" when there was no answer).",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kasd_gitlab_request_duration_seconds",
			Help:    "Duration of requests to GitLab; for modules, until the response body was streamed.",
			Buckets: prometheus.DefBuckets,
		}, []string{"endpoint"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_gitlab_agent_info_cache_total",
			Help: "agent_info cache lookups by result (hit, miss, negative_hit).",
		}, []string{"result"}),
		cacheEvictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_gitlab_agent_info_cache_evictions_total",
			Help: "agent_info cache entries dropped before insertion of a new one, by reason (expired, full).",
		}, []string{"reason"}),
		moduleRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_gitlab_module_requests_total",
			Help: "Module requests by module and HTTP status: GitLab's, kasd's own 400 for a bad path (module \"(invalid)\" when the path named no valid module), \"rate_limited\" when kasd's rate limit refused it, \"error\" when GitLab did not answer.",
		}, []string{"module", "code"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasd_gitlab_rate_limited_total",
			Help: "Requests to GitLab refused by kasd's client-side rate limit.",
		}),
		malformedTokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasd_gitlab_agent_tokens_malformed_total",
			Help: "Agent tokens refused as unauthenticated without asking GitLab: longer than 1024 bytes, or with a byte outside printable ASCII.",
		}),
		badAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasd_gitlab_answers_refused_total",
			Help: "GitLab answers (200) kasd could not use, by endpoint and reason: too_large (an agent_info answer over 1 MiB), malformed (not JSON), no_agent_id; the agent's admission is refused as auth_unavailable and retried.",
		}, []string{"endpoint", "reason"}),
		modules: make(map[string]struct{}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.cache, m.cacheEvictions, m.moduleRequests, m.rateLimited, m.malformedTokens, m.badAnswers} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("gitlab: metrics already registered (one Client per registry)")
			}
			return nil, err
		}
	}
	return m, nil
}

// moduleLabel caps the cardinality of the module label: only valid module names reach it,
// and only the first maxModuleLabels distinct ones get their own value.
func (m *metrics) moduleLabel(module string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.modules[module]; ok {
		return module
	}
	if len(m.modules) >= maxModuleLabels {
		return moduleLabelOther
	}
	m.modules[module] = struct{}{}
	return module
}

func codeLabel(status int) string {
	if status == 0 {
		return codeError
	}
	return strconv.Itoa(status)
}
