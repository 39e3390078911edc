// Command qkasbench runs qkas's benchmarks and writes results.json, REPORT.md and plots into
// benchmarks/results/<timestamp>/. See benchmarks/README.md. main only wires flags to the runner.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/qkas/qkas/benchmarks/runner"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == runner.ChildArg { // the runner re-executing itself
		child(os.Args[2:])
		return
	}
	preset := flag.String("preset", "quick", "sizes: quick (make bench-quick), full (make bench) or tiny")
	scenarios := flag.String("scenarios", "", "comma-separated scenarios to run (default all): "+strings.Join(runner.AllScenarios, ","))
	results := flag.String("results", "", "results root; a <timestamp>/ directory is made in it (default benchmarks/results)")
	bin := flag.String("bin", "", "directory with kasd, agentd and kasctl (default: build them)")
	keep := flag.Bool("keep", false, "keep the work directory with process logs")
	latest := flag.String("latest", "", "also copy the results to this directory, replacing it")
	readme := flag.String("readme", "", "with --latest: update the headline between the markers of this README")
	scaleAgents := flag.String("scale-agents", "", "comma-separated simulated agent counts, overriding the preset's (e.g. 10000,50000)")
	flag.Parse()

	cfg := runner.Config{Preset: *preset, ResultsDir: *results, BinDir: *bin, KeepWork: *keep, Log: os.Stderr}
	if *scaleAgents != "" {
		sizes, err := runner.Preset(*preset)
		if err == nil {
			sizes.ScaleAgents, err = parseInts(*scaleAgents)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "qkasbench:", err)
			os.Exit(2)
		}
		cfg.Sizes = &sizes
	}
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := runner.Run(ctx, cfg)
	if err == nil && *latest != "" {
		err = runner.CopyResults(out, *latest)
	}
	if err == nil && *latest != "" && *readme != "" {
		link, _ := filepath.Rel(filepath.Dir(*readme), *latest)
		err = runner.UpdateReadme(*readme, *latest, filepath.ToSlash(link))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "qkasbench:", err)
		os.Exit(1)
	}
	fmt.Println(out)
}

// child runs one of the runner's reference systems until SIGTERM.
func child(args []string) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runner.ChildMain(ctx, args); err != nil {
		fmt.Fprintln(os.Stderr, "qkasbench child:", err)
		os.Exit(1)
	}
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--scale-agents: bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}
