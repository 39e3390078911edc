// Command fleetsim runs many agentd agents in one process, each with its own UDP socket (package
// benchmarks/fleetsim), until SIGTERM or SIGINT. The scale benchmark starts it in a network
// namespace of its own; it prints how many agents are connected every --status-every.
//
//	fleetsim --kas-address 10.250.0.1:8150 --ca-file ca.crt --tokens-file fleet.tokens --start-rate 2000
//
// The tokens file has one "id token" line per agent.
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

func main() {
	kas := flag.String("kas-address", "", "kasd agent endpoints, comma-separated (required)")
	caFile := flag.String("ca-file", "", "CA that issued kasd's certificate (required)")
	serverName := flag.String("server-name", "", "TLS server name (default: the address's host)")
	tokensFile := flag.String("tokens-file", "", "one \"id token\" line per agent (required)")
	rate := flag.Float64("start-rate", 2000, "agents started per second (0: all at once)")
	keepAlive := flag.Duration("keep-alive-period", quic.DefaultAgentKeepAlivePeriod, "agents' QUIC keep-alive period (agentd's default)")
	idle := flag.Duration("idle-timeout", quic.DefaultAgentMaxIdleTimeout, "agents' QUIC idle timeout (agentd's default)")
	every := flag.Duration("status-every", 5*time.Second, "how often to print the connected count")
	flag.Parse()
	if err := run(*kas, *caFile, *serverName, *tokensFile, *rate, *keepAlive, *idle, *every); err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
}

func run(kas, caFile, serverName, tokensFile string, rate float64, keepAlive, idle, every time.Duration) error {
	if kas == "" || caFile == "" || tokensFile == "" {
		return fmt.Errorf("--kas-address, --ca-file and --tokens-file are required")
	}
	// One socket per agent: raise the descriptor limit (root may raise the hard one too).
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) != nil && unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	agents, err := fleetsim.LoadTokensFile(tokensFile)
	if err != nil {
		return err
	}
	tlsConf, err := quic.ClientTLSConfig(caFile, serverName, api.ALPNAgent)
	if err != nil {
		return err
	}
	log := zerolog.New(os.Stderr).Level(zerolog.ErrorLevel).With().Timestamp().Logger()
	f, err := fleetsim.New(fleetsim.Config{
		KasAddresses: strings.Split(kas, ","), TLS: tlsConf, Agents: agents,
		QUIC: quic.Config{KeepAlivePeriod: keepAlive, MaxIdleTimeout: idle}, Log: &log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan struct{})
	go func() { // owned: run waits for done
		defer close(done)
		f.Run(ctx, rate)
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-t.C:
			fmt.Printf("%s started %d connected %d\n", time.Now().UTC().Format(time.TimeOnly), f.Started(), f.Connected())
		}
	}
}
