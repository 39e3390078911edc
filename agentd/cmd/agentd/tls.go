package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/qkas/qkas/internal/certreload"
)

// loadCA loads --ca-file as a CA bundle reloaded without a restart (README "Reloading TLS
// certificates"): new connections to kasd verify with the bundle in use, connections up stay.
// It returns nil without --ca-file (system roots, which are not reloaded).
func loadCA(o *options, reg prometheus.Registerer, log *zerolog.Logger) (*certreload.CAPool, error) {
	m, err := certreload.NewMetrics(reg, "agentd")
	if err != nil {
		return nil, err
	}
	if o.caFile == "" {
		return nil, nil
	}
	p, err := certreload.NewCAPool(certreload.CAPoolConfig{Name: "ca", File: o.caFile, Metrics: m, Log: log})
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	return p, nil
}

// watchCA reloads ca on SIGHUP and when its file changes, in a goroutine of g that ends with
// ctx. A bad file keeps the bundle in use (logged, counted in
// agentd_tls_reloads_total{result="error"}).
func watchCA(ctx context.Context, g *errgroup.Group, ca *certreload.CAPool, log *zerolog.Logger) {
	if ca == nil {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	g.Go(func() error {
		defer signal.Stop(hup)
		return certreload.Watch(ctx, hup, log, ca)
	})
}
