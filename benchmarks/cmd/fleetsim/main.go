// Command fleetsim runs many agentd agents in one process, each with its own UDP socket (package
// benchmarks/fleetsim), until SIGTERM or SIGINT. The scale benchmark starts it in a network
// namespace of its own, as several processes when the fleet needs more sockets than one process
// may open; it prints how many agents are connected every --status-every, and with
// --status-file also writes that as JSON (fleetsim.Status) for the benchmark to read.
//
//	fleetsim --kas-address 10.250.0.1:8150 --ca-file ca.crt --tokens-file fleet.tokens --start-rate 2000
//
// The tokens file has one "id token" line per agent. A process refuses more agents than its
// open-files limit allows (fleetsim.MaxAgents: one socket per agent, a quarter of the limit
// kept free) rather than fail sockets later: split the fleet over several processes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/benchmarks/fleetsim"
	"github.com/qkas/qkas/quic"
)

type config struct {
	kas, caFile, serverName, tokensFile, statusFile string
	rate                                            float64
	keepAlive, idle, every                          time.Duration
	maxConnecting                                   int
}

func main() {
	var c config
	flag.StringVar(&c.kas, "kas-address", "", "kasd agent endpoints, comma-separated (required)")
	flag.StringVar(&c.caFile, "ca-file", "", "CA that issued kasd's certificate (required)")
	flag.StringVar(&c.serverName, "server-name", "", "TLS server name (default: the address's host)")
	flag.StringVar(&c.tokensFile, "tokens-file", "", "one \"id token\" line per agent (required)")
	flag.StringVar(&c.statusFile, "status-file", "", "write the agent counts there as JSON every --status-every and at exit (fleetsim.Status)")
	flag.Float64Var(&c.rate, "start-rate", 2000, "agents started per second (0: all at once)")
	flag.IntVar(&c.maxConnecting, "max-connecting", 64, "agents of this process connecting at once (dial, handshakes, Hello); the others wait without dialling, as agents with CPUs of their own would not starve each other (0: no limit)")
	flag.DurationVar(&c.keepAlive, "keep-alive-period", quic.DefaultAgentKeepAlivePeriod, "agents' QUIC keep-alive period (agentd's default)")
	flag.DurationVar(&c.idle, "idle-timeout", quic.DefaultAgentMaxIdleTimeout, "agents' QUIC idle timeout (agentd's default)")
	flag.DurationVar(&c.every, "status-every", 5*time.Second, "how often to print (and write) the connected count")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	if c.kas == "" || c.caFile == "" || c.tokensFile == "" {
		return fmt.Errorf("--kas-address, --ca-file and --tokens-file are required")
	}
	if c.every <= 0 {
		return fmt.Errorf("--status-every must be positive")
	}
	// One socket per agent: raise the descriptor limit (root with CAP_SYS_RESOURCE may raise the
	// hard one too; otherwise the soft one goes up to the hard one).
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) != nil && unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	agents, err := fleetsim.LoadTokensFile(c.tokensFile)
	if err != nil {
		return err
	}
	if limit := fleetsim.MaxAgents(lim.Cur); len(agents) > limit {
		return fmt.Errorf("%d agents need a socket each, this process may open %d files (at most %d agents): split the fleet over several processes",
			len(agents), lim.Cur, limit)
	}
	tlsConf, err := quic.ClientTLSConfig(c.caFile, c.serverName, api.ALPNAgent)
	if err != nil {
		return err
	}
	log := zerolog.New(os.Stderr).Level(zerolog.ErrorLevel).With().Timestamp().Logger()
	f, err := fleetsim.New(fleetsim.Config{
		KasAddresses: strings.Split(c.kas, ","), TLS: tlsConf, Agents: agents,
		QUIC: quic.Config{KeepAlivePeriod: c.keepAlive, MaxIdleTimeout: c.idle}, Log: &log,
		MaxConnecting: c.maxConnecting,
	})
	if err != nil {
		return err
	}
	report := func(done bool) error {
		s := fleetsim.Status{Agents: len(agents), Started: f.Started(), Connected: f.Connected(),
			NoFile: lim.Cur, Time: time.Now().UTC(), Done: done}
		fmt.Printf("%s started %d connected %d\n", s.Time.Format(time.TimeOnly), s.Started, s.Connected)
		if c.statusFile == "" {
			return nil
		}
		return fleetsim.WriteStatusFile(c.statusFile, s)
	}
	if err := report(false); err != nil { // the file exists from the start
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan struct{})
	go func() { // owned: run waits for done
		defer close(done)
		f.Run(ctx, c.rate)
	}()
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return report(true)
		case <-t.C:
			if err := report(false); err != nil {
				stop()
				<-done
				return err
			}
		}
	}
}
