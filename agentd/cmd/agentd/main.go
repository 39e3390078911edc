// Command agentd is the qkas agent. main only wires: flags, AGENTD_<FLAG> environment variables
// and the optional YAML config file (in that order of precedence) become an agentd.Config, and
// the agent runs until SIGINT/SIGTERM.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/qkas/qkas/internal/buildinfo"
)

// version is set by the Makefile: -ldflags "-X main.version=$(git describe)". main replaces an
// unset one with the module version Go recorded, so that the hello to kasd, the logs and
// agentd_build_info say the same.
var version = "dev"

// revision is set by the Makefile: -ldflags "-X main.revision=$(git rev-parse HEAD)"; empty, the
// VCS revision Go stamped (if any) is used.
var revision = ""

// envPrefix: every flag --some-flag is also read from AGENTD_SOME_FLAG (internal/cliconfig).
const envPrefix = "AGENTD"

func main() {
	version = buildinfo.Get(version, revision).Version
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		printError(os.Stderr, err)
		os.Exit(1)
	}
}

// printError writes err to w one problem per line, each prefixed "agentd:" once (a
// configuration with several problems is one joined error; the library prefixes its own).
func printError(w io.Writer, err error) {
	for line := range strings.SplitSeq(strings.TrimPrefix(err.Error(), "agentd: "), "\n") {
		fmt.Fprintln(w, "agentd:", line)
	}
}
