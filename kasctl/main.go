// Command kasctl makes the secrets qkas needs: agent tokens (and the entries
// of kasd's agent tokens file), client JWTs for kasd's HTTP API, and secret
// files. See run.go for the commands; main only wires the process to run.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}
