// Command chaos is qkas's fault suite (`make chaos`, issue 11): real kasd, agentd and etcd
// processes, each in its own network namespace, under load, one fault at a time; each fault has
// a bound on the requests it may cost, and the command fails when one is broken. Needs root.
//
//	go run ./chaos                      # the full run: 30 agents, 30 s per scenario (~8 min)
//	go run ./chaos -quick               # 10 agents, short scenarios (< 2 min)
//	go run ./chaos -scenarios kasd-kill,partition -agents 100
//	go run ./chaos -keep                # leave the fleet running afterwards, until Ctrl-C
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/qkas/qkas/chaos/suite"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg suite.Config
	var scenarios string
	quick := flag.Bool("quick", false, "a quick run: 10 agents, 150 concurrent requests, short faults (< 2 min); explicit flags win")
	flag.IntVar(&cfg.Agents, "agents", 0, "agentd processes (default 30; -quick 10)")
	flag.IntVar(&cfg.Concurrency, "concurrency", 0, "concurrent requests (default 300; -quick 150)")
	flag.DurationVar(&cfg.Duration, "duration", 0, "load per scenario, longer when the fault needs it (default 30s; -quick 5s)")
	flag.DurationVar(&cfg.Pause, "pause", 0, "each load worker sleeps a random [0, 2*pause) between requests")
	flag.StringVar(&scenarios, "scenarios", "", "comma-separated scenarios to run, in order (default all: "+strings.Join(suite.AllScenarios(), ",")+")")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the fleet running after the scenarios until interrupted, and keep the work directory")
	flag.StringVar(&cfg.BinDir, "bin", "", "directory with kasd, agentd and kasctl (default: go build into the work directory)")
	flag.StringVar(&cfg.WorkDir, "work", "", "work directory for logs, data and secrets (default: a temporary directory, removed after a passing run)")
	flag.Parse()
	if scenarios != "" {
		cfg.Scenarios = strings.Split(scenarios, ",")
	}
	if *quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["agents"] {
			cfg.Agents = 10
		}
		if !set["concurrency"] {
			cfg.Concurrency = 150
		}
		if !set["duration"] {
			cfg.Duration = 5 * time.Second
		}
		cfg.Warmup, cfg.Tail = time.Second, 2*time.Second
		cfg.StopHold = 7 * time.Second // still longer than agentd's 6 s idle timeout
		cfg.EtcdHold, cfg.CutHold, cfg.KillHold = 5*time.Second, 4*time.Second, 2*time.Second
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := suite.Run(ctx, cfg)
	if errors.Is(err, suite.ErrBoundBroken) {
		return errors.New("a scenario broke its bound (see above)")
	}
	if errors.Is(err, suite.ErrHostStalled) {
		return errors.New("inconclusive: a bound broke while the host stalled (peer links untouched by the fault timed out); run again on a quieter machine")
	}
	return err
}
