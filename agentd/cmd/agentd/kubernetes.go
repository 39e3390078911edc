package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/agentd/kubernetes"
)

// kubernetesOptions are the flags of the built-in kubernetes service.
type kubernetesOptions struct {
	enabled    optionalBool
	kubeconfig string
	policyFile string
}

func (o *kubernetesOptions) register(fs *flag.FlagSet) {
	fs.Var(&o.enabled, "kubernetes", "offer the built-in kubernetes service (the cluster's API server with this agent's credentials); default: true in a cluster ($KUBERNETES_SERVICE_HOST set) or with --kubeconfig")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for the kubernetes service (default: in-cluster ServiceAccount); implies --kubernetes unless --kubernetes=false")
	fs.StringVar(&o.policyFile, "kubernetes-policy-file", "", "YAML policy of allowed API paths and verbs for the kubernetes service (default: everything the agent's identity may do)")
}

// on resolves the --kubernetes default: an explicit value wins; otherwise on in a cluster or
// when a kubeconfig is given.
func (o *kubernetesOptions) on(inCluster bool) bool {
	if o.enabled.set {
		return o.enabled.value
	}
	return inCluster || o.kubeconfig != ""
}

// handlers returns the in-process service handlers for agentd.Config.Handlers (nil when the
// kubernetes service is off) and a function that releases them after the agent has stopped.
func (o *kubernetesOptions) handlers(reg prometheus.Registerer, log *zerolog.Logger) (map[string]agentd.ServiceHandler, func(), error) {
	if !o.on(os.Getenv("KUBERNETES_SERVICE_HOST") != "") {
		if o.policyFile != "" {
			return nil, nil, errors.New("--kubernetes-policy-file given but the kubernetes service is off")
		}
		return nil, func() {}, nil
	}
	restConfig, err := kubernetes.LoadRESTConfig(o.kubeconfig)
	if err != nil {
		if o.kubeconfig == "" {
			return nil, nil, fmt.Errorf("kubernetes service: in-cluster config: %w (use --kubeconfig, or --kubernetes=false)", err)
		}
		return nil, nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	var policy *kubernetes.Policy
	if o.policyFile != "" {
		if policy, err = kubernetes.LoadPolicy(o.policyFile); err != nil {
			return nil, nil, fmt.Errorf("--kubernetes-policy-file: %w", err)
		}
	}
	svc, err := kubernetes.New(kubernetes.Config{REST: restConfig, Policy: policy, Registerer: reg, Log: log})
	if err != nil {
		return nil, nil, err
	}
	log.Info().Str("api_server", restConfig.Host).Bool("policy", policy != nil).Msg("kubernetes service enabled")
	return map[string]agentd.ServiceHandler{"kubernetes": svc}, svc.Close, nil
}

// optionalBool is a boolean flag that remembers whether it was set (on the command line or by
// the config file, which calls Set too), so that a default can depend on other flags.
type optionalBool struct {
	value, set bool
}

func (b *optionalBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	b.value, b.set = v, true
	return nil
}

func (b *optionalBool) String() string {
	if b == nil || !b.set {
		return "auto"
	}
	return strconv.FormatBool(b.value)
}

func (b *optionalBool) IsBoolFlag() bool { return true }
