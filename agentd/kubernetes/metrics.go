package kubernetes

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests *prometheus.CounterVec
	denied   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentd_kubernetes_requests_total",
			Help: "Requests to the kubernetes service by Kubernetes verb and HTTP status (101 for upgrades).",
		}, []string{"verb", "code"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentd_kubernetes_policy_denied_total",
			Help: "Requests refused by the agent's kubernetes policy, by reason (path, verb, path_not_canonical).",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.denied} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
