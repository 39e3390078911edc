// Command kasd is the qkas server. main only wires: flags and the optional YAML config file
// become a kasd.Config, listeners are opened and handed to the server, and signals drain it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kasd:", err)
		os.Exit(1)
	}
}
