// Command kasctl makes the secrets qkas needs: agent tokens (and the entries
// of kasd's agent tokens file), client JWTs for kasd's HTTP API, and secret
// files. See run.go for the commands; main only wires the process to run:
// KASCTL_<FLAG> environment variables, --version and the completion command
// (completion.go) are handled here, in front of run.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runMain(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// runMain is run with what main adds: "kasctl --version" is "kasctl version", "kasctl
// completion SHELL" prints a completion script, and every flag of a command may also be set as
// KASCTL_<FLAG> (the command line wins).
func runMain(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "--version", "-version":
			args = append([]string{"version"}, args[1:]...)
		case completionCommand.name:
			return runCompletion(args[1:], stdout, stderr)
		}
	}
	args, err := withEnv(args, lookup)
	if err != nil {
		return err
	}
	err = run(ctx, args, stdout, stderr)
	switch {
	case len(args) == 0:
		fmt.Fprint(stderr, mainUsage) // after run's usage: what main adds
	case len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		fmt.Fprint(stdout, mainUsage) // help asked for: on stdout, as run's
	}
	return err
}

const mainUsage = `
also:
  completion SHELL  print a completion script: source <(kasctl completion bash) (or zsh)

Every flag can also be set in the environment as KASCTL_<FLAG> (upper case,
dashes as underscores: --secret-file is KASCTL_SECRET_FILE); the command line
wins. kasctl --version is kasctl version.
`
