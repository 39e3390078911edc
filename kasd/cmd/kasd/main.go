// Command kasd is the qkas server. main only wires: flags, KASD_<FLAG> environment variables and
// the optional YAML config file (in that order of precedence) become a kasd.Config, listeners
// are opened and handed to the server, and signals drain it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/qkas/qkas/internal/buildinfo"
)

// version is set by the Makefile: -ldflags "-X main.version=$(git describe)". main replaces an
// unset one with the module version Go recorded, so that what kasd reports to peers and GitLab,
// logs and exports as kasd_build_info is the same everywhere.
var version = "dev"

// revision is set by the Makefile: -ldflags "-X main.revision=$(git rev-parse HEAD)"; empty, the
// VCS revision Go stamped (if any) is used.
var revision = ""

// envPrefix: every flag --some-flag is also read from KASD_SOME_FLAG (internal/cliconfig).
const envPrefix = "KASD"

func main() {
	version = buildinfo.Get(version, revision).Version
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		// The kasd package's errors say "kasd: " already: one prefix, not "kasd: kasd: ".
		fmt.Fprintln(os.Stderr, "kasd:", strings.TrimPrefix(err.Error(), "kasd: "))
		os.Exit(1)
	}
}
