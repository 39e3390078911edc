// Command qkasbench runs qkas's benchmarks and writes results.json, REPORT.md (one page: the
// headline ratios first), DETAILS.md and plots into benchmarks/results/<timestamp>/, which git
// ignores: a run never changes tracked files. See benchmarks/README.md. main only wires flags to
// the runner.
//
// Without running anything: --report DIR redraws DIR's reports and summary plots from its
// results.json; --readme FILE --reference DIR quotes DIR (a committed reference run) in FILE's
// headline.
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
	latest := flag.String("latest", "", "also copy the results to this directory, replacing it (make bench-quick: benchmarks/results/last, git-ignored)")
	reportDir := flag.String("report", "", "run nothing: rewrite REPORT.md, DETAILS.md and the summary plots of this results directory from its results.json")
	reference := flag.String("reference", "", "run nothing: with --readme, quote this results directory (a committed reference run) in the README's headline")
	readme := flag.String("readme", "", "with --reference: the README whose headline (between its markers) is replaced")
	scaleAgents := flag.String("scale-agents", "", "comma-separated simulated agent counts, overriding the preset's (e.g. 10000,50000)")
	scaleRate := flag.Int("scale-start-rate", 0, "fleet agents started per second in the scale scenario, overriding the preset's (1000); lower it where the fleet shares the machine's cores with kasd")
	scaleKasdCPUs := flag.String("scale-kasd-cpus", "", "CPU list (taskset -c syntax, e.g. 0) kasd alone runs on in the scale scenario; the fleet, the routing agentd and the runner get the other CPUs, as if the fleet ran on machines of its own (default: all share every CPU)")
	scaleSettle := flag.Duration("scale-settle", 0, "how long the fleet idles in the scale scenario between kasd's RSS reading and the idle window, overriding the preset's (scale: 100s, four keep-alive periods, path MTU discovery over); longer for memory at steady state (stacks shrink and free pages go back over minutes)")
	flag.Parse()
	switch {
	case *reportDir != "":
		exit(runner.WriteReports(*reportDir))
		fmt.Println(filepath.Join(*reportDir, runner.ReportFile))
		return
	case *reference != "" || *readme != "":
		if *reference == "" || *readme == "" {
			exit(fmt.Errorf("--readme and --reference go together"))
		}
		link, err := filepath.Rel(filepath.Dir(*readme), *reference)
		if err == nil {
			err = runner.UpdateReadme(*readme, *reference, filepath.ToSlash(link))
		}
		exit(err)
		return
	}

	cfg := runner.Config{Preset: *preset, ResultsDir: *results, BinDir: *bin, KeepWork: *keep, Log: os.Stderr}
	if *scaleAgents != "" || *scaleRate != 0 || *scaleKasdCPUs != "" || *scaleSettle != 0 {
		sizes, err := runner.Preset(*preset)
		if err == nil && *scaleAgents != "" {
			sizes.ScaleAgents, err = parseInts(*scaleAgents)
		}
		if err == nil && *scaleRate < 0 {
			err = fmt.Errorf("--scale-start-rate: %d agents a second", *scaleRate)
		}
		if *scaleRate > 0 {
			sizes.ScaleStartRate = *scaleRate
		}
		if err == nil && *scaleSettle < 0 {
			err = fmt.Errorf("--scale-settle: %v", *scaleSettle)
		}
		if *scaleSettle > 0 {
			sizes.ScaleSettle = *scaleSettle
		}
		sizes.ScaleKasdCPUs = *scaleKasdCPUs
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
	if out != "" {
		// REPORT.md one page, DETAILS.md and the summary plots; also after a partial run.
		if rerr := runner.WriteReports(out); err == nil {
			err = rerr
		}
	}
	if err == nil && *latest != "" {
		err = runner.CopyResults(out, *latest)
	}
	exit(err)
	fmt.Println(filepath.Join(out, runner.ReportFile))
}

// exit ends the program with status 1 when err is not nil.
func exit(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "qkasbench:", err)
		os.Exit(1)
	}
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
