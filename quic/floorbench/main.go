//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"
)

func main() {
	var cfg Config
	label := flag.String("label", "", "text printed first on the result line (e.g. upstream, patched)")
	flag.DurationVar(&cfg.AckDelay, "ack-delay", 0, "quicgo.Config.MaxAckDelay (patched quic-go only); 0: quic-go's default, 25ms")
	flag.Int64Var(&cfg.QUIC.MaxIncomingStreams, "max-streams", 0, "quic.Config.MaxIncomingStreams; 0: qkas's default")
	flag.IntVar(&cfg.RequestSize, "req", 100, "request bytes")
	flag.IntVar(&cfg.ResponseSize, "resp", 1024, "response bytes")
	flag.DurationVar(&cfg.HandlerDelay, "handler-delay", 0, "server's wait before answering each request")
	flag.IntVar(&cfg.Warmup, "warmup", 2000, "warmup requests")
	flag.IntVar(&cfg.Requests, "n", 20000, "sequential requests measured at concurrency 1")
	flag.IntVar(&cfg.Concurrency, "c", 64, "concurrency of the CPU phase; 0 skips it")
	flag.DurationVar(&cfg.LoadDuration, "load", 3*time.Second, "duration of the CPU phase")
	flag.StringVar(&cfg.ServerNetns, "server-netns", "", "network namespace of the server's sockets")
	flag.StringVar(&cfg.ClientNetns, "client-netns", "", "network namespace of the client's sockets")
	flag.StringVar(&cfg.ListenAddr, "listen", ":0", "server listen address")
	flag.StringVar(&cfg.DialHost, "dial", "127.0.0.1", "address the client dials")
	flag.BoolVar(&cfg.TCP, "tcp", true, "also measure the same exchange over TCP")
	flag.Parse()
	if cfg.Concurrency == 0 {
		cfg.Concurrency = -1 // Config's zero value means the default
	}
	if err := run(*label, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "floorbench:", err)
		os.Exit(1)
	}
}

func run(label string, cfg Config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	if label != "" {
		fmt.Print(label, " ")
	}
	fmt.Println(res)
	return nil
}
