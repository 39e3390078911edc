package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/buildinfo"
	"github.com/qkas/qkas/internal/cliconfig"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// revision is set at build time: -ldflags "-X main.revision=$(git rev-parse HEAD)" (the
// Makefile); empty, the VCS revision Go stamped (if any) is used.
var revision = ""

const usage = `usage: kasctl <command> [flags] [args]

commands:
  agent-token NAME  make a token for agent NAME (standalone mode) and the entry
                    for kasd's --agent-tokens-file
  credential        client-go exec credential plugin: a cached, renewed client JWT
  jwt               mint a client JWT for kasd's HTTP API
  jwks              print the public JWK set of signing keys (--api-jwks-file)
  kubeconfig        write a kubeconfig for an agent's cluster through kasd
  secret            make a secret for a secret file (base64 of 32 random bytes)
  version           print kasctl's version

Run "kasctl <command> -h" for a command's flags.
`

// usageError is a mistake in the command line: exit status 2, and the
// usage has already been printed.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// helpAsked is a usage asked for (-h, --help, help): run prints it on stdout and exits 0.
type helpAsked struct{ text []byte }

func (*helpAsked) Error() string { return "help asked for" }

// run runs kasctl with args (without the program name). Results, and help asked for, go to
// stdout; usage after a mistake, and warnings, to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := runCommand(ctx, args, stdout, stderr)
	var h *helpAsked
	if errors.As(err, &h) {
		_, err = stdout.Write(h.text)
	}
	return err
}

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{"no command"}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "agent-token":
		return runAgentToken(ctx, args, stdout, stderr)
	case "credential":
		return runCredential(ctx, args, stdout, stderr)
	case "jwt":
		return runJWT(ctx, args, stdout, stderr)
	case "jwks":
		return runJWKS(ctx, args, stdout, stderr)
	case "kubeconfig":
		return runKubeconfig(ctx, args, stdout, stderr)
	case "secret":
		return runSecret(ctx, args, stdout, stderr)
	case "version":
		return runVersion(args, stdout, stderr)
	case "-h", "-help", "--help", "help":
		return &helpAsked{[]byte(usage)}
	}
	msg := fmt.Sprintf("unknown command %q", cmd)
	fmt.Fprintf(stderr, "kasctl: %s\n\n%s", msg, usage)
	return &usageError{msg}
}

// exitCode reports err on stderr unless run already did (usage) and returns
// the process's exit status: 0 ok, 2 usage, 1 any other error.
func exitCode(err error, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return 2
	}
	fmt.Fprintf(stderr, "kasctl: %v\n", err)
	return 1
}

// newFlagSet returns a flag set for a subcommand whose usage line is synopsis.
func newFlagSet(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kasctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: kasctl %s %s\n\n%s\n", name, synopsis, about)
		if hasFlags(fs) {
			fmt.Fprintln(fs.Output(), "\nflags:")
			cliconfig.PrintDefaults(fs)
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) (any bool) {
	fs.VisitAll(func(*flag.Flag) { any = true })
	return any
}

// parseArgs parses flags placed before, between or after the positional
// arguments (kasctl agent-token NAME --token-out F), and checks there are
// exactly want positionals.
func parseArgs(fs *flag.FlagSet, args []string, want int) ([]string, error) {
	cliconfig.ExplainDurations(fs)
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != want {
		msg := fmt.Sprintf("want %d argument(s), got %d", want, len(pos))
		if len(pos) > want {
			msg = fmt.Sprintf("unexpected argument %q", pos[want])
		}
		fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), msg)
		fs.Usage()
		return nil, &usageError{msg}
	}
	return pos, nil
}

// parse is fs.Parse(args) with -h's usage held back for stdout (helpAsked); after a mistake the
// message and the usage go to fs's output (stderr), exit status 2.
func parse(fs *flag.FlagSet, args []string) error {
	stderr := fs.Output()
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		return &helpAsked{buf.Bytes()}
	}
	stderr.Write(buf.Bytes()) //nolint:errcheck // nowhere else to report it
	return &usageError{err.Error()}
}

func runSecret(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("secret", "[-o FILE]",
		"Prints a new secret: base64 of 32 random bytes, the format of GitLab's\n.gitlab_kas_secret and of kasd's secret files. Prefer -o FILE to\nredirecting stdout: the file is created 0600 and never replaced.", stderr)
	out := fs.String("out", "", "write the secret to `FILE` (mode 0600, must not exist) instead of printing it")
	fs.StringVar(out, "o", "", "shorthand for --out `FILE`")
	if _, err := parseArgs(fs, args, 0); err != nil {
		return err
	}
	secret := auth.NewSecret()
	if *out != "" {
		if err := writeNewFile(*out, secret+"\n"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "# secret written to %s\n", *out)
		return nil
	}
	fmt.Fprintln(stdout, secret)
	return nil
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "", "Prints kasctl's version.", stderr)
	if _, err := parseArgs(fs, args, 0); err != nil {
		return err
	}
	// The same line as kasd --version and agentd --version (internal/buildinfo).
	fmt.Fprintln(stdout, buildinfo.Get(version, revision).String("kasctl"))
	return nil
}

// writeNewFile writes content to a new file readable only by its owner; it
// refuses to replace an existing file, which may hold a secret still in use.
func writeNewFile(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; not replacing it", path)
		}
		return err
	}
	_, err = io.WriteString(f, content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// splitList splits a comma-separated flag value; "" is an empty list.
func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}
