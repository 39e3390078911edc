package cliconfig

import (
	"flag"
	"fmt"
	"reflect"
	"strings"
)

// EnvName is the environment variable that sets flag name for the program whose prefix is
// prefix: EnvName("KASD", "agent-listen") is "KASD_AGENT_LISTEN".
func EnvName(prefix, name string) string {
	return prefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
}

// notFromEnv are flags the environment never sets: a stray KASD_VERSION=1 must not turn the
// daemon into a program that prints its version and exits.
var notFromEnv = map[string]bool{"version": true, "help": true, "h": true}

// ApplyEnv sets every flag of fs that was not given on the command line from the environment
// variable EnvName(prefix, flag) when lookup finds it (an empty value is a value, as --flag=
// is). It must be called after fs.Parse and before Apply, so that the precedence is command
// line, then environment, then config file: Apply skips the flags set here. A value the flag
// refuses is an error naming the variable. One-letter flags (shorthands) are not read, nor are
// the flags of notFromEnv. Variables with the prefix that name no flag are ignored: Kubernetes
// sets KASD_PORT, KASD_SERVICE_HOST, … for a Service named kasd.
//
// lookup is os.LookupEnv in the mains; tests pass a map's.
func ApplyEnv(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	given := setFlags(fs)
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || len(f.Name) == 1 || notFromEnv[f.Name] || given.has(f) {
			return
		}
		name := EnvName(prefix, f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("environment variable %s=%q (--%s): %w", name, v, f.Name, serr)
		}
	})
	return err
}

// EnvHelp is the paragraph the mains' usage prints about the environment and the config file;
// example is one of the program's own flags, shown with its variable.
func EnvHelp(prefix, example string) string {
	return fmt.Sprintf("Every flag can also be set in the environment as %s_<FLAG> (upper case, dashes as\n"+
		"underscores: --%s is %s) or in the --config file (keys are flag\n"+
		"names). The command line wins over the environment, which wins over the config file.\n",
		prefix, example, EnvName(prefix, example))
}

// SetUsage makes fs's usage print a synopsis, EnvHelp(prefix, example) and the flags.
func SetUsage(fs *flag.FlagSet, prefix, example string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s [flags]\n\n%s\nflags:\n", fs.Name(), EnvHelp(prefix, example))
		PrintDefaults(fs)
	}
}

// givenFlags are the flags already set (command line, then environment), by name and by the
// variable behind them, so that an alias (agentd's --service and --services, kasctl's -o and
// --out) counts as given too.
type givenFlags struct {
	names  map[string]bool
	values map[uintptr]bool
}

func setFlags(fs *flag.FlagSet) givenFlags {
	g := givenFlags{names: map[string]bool{}, values: map[uintptr]bool{}}
	fs.Visit(func(f *flag.Flag) {
		g.names[f.Name] = true
		if p, ok := valuePointer(f.Value); ok {
			g.values[p] = true
		}
	})
	return g
}

func (g givenFlags) has(f *flag.Flag) bool {
	if g.names[f.Name] {
		return true
	}
	p, ok := valuePointer(f.Value)
	return ok && g.values[p]
}

// valuePointer is the address of the variable behind a flag: the flag package's values are
// pointers to the variable (StringVar's *stringValue is the *string converted), and so are
// this module's (StringList).
func valuePointer(v flag.Value) (uintptr, bool) {
	if u, ok := v.(interface{ Unwrap() flag.Value }); ok {
		v = u.Unwrap()
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return 0, false
	}
	return rv.Pointer(), true
}
