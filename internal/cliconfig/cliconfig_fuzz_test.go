package cliconfig

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func fuzzFlags() (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fixed := fs.String("fixed", "cli", "")
	fs.String("listen", ":1", "")
	fs.String("config", "", "")
	fs.Duration("grace", time.Second, "")
	fs.Bool("debug", false, "")
	fs.Int("max", 1, "")
	var list StringList
	fs.Var(&list, "service", "")
	return fs, fixed
}

// FuzzApplyBytes: any config file either applies or fails with an error naming it, and never
// overrides a flag given on the command line.
func FuzzApplyBytes(f *testing.F) {
	for _, s := range []string{
		"listen: ':5'\ngrace: 3s\ndebug: true\nmax: 7\nservice: [a=b, 'c=d,e=f']\n", "service: {web: 'http://x', api: 'http://y'}\n",
		"fixed: file\n", "config: x\n", "nope: 1\n", "grace: soon\n", "{{{", "listen: [[1]]\n", "listen: {a: {b: c}}\n",
		"max: 1e400\n", "debug: null\n", "", "---\n---\n", "a: &a [*a]\n", "listen: !!binary aGk=\n", "max: 0x10\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fs, fixed := fuzzFlags()
		if err := fs.Parse([]string{"--fixed", "cli"}); err != nil {
			t.Fatal(err)
		}
		if err := ApplyBytes(fs, "c.yaml", data); err != nil && !strings.Contains(err.Error(), "c.yaml") {
			t.Fatalf("error %q does not name the file", err)
		}
		if *fixed != "cli" {
			t.Fatalf("the file overrode a command-line flag: %q", *fixed)
		}
	})
}

// FuzzApplyEnv: any environment either applies or fails with an error naming the variable, and
// never overrides a flag given on the command line.
func FuzzApplyEnv(f *testing.F) {
	for _, s := range [][2]string{
		{"LISTEN", ":5"}, {"GRACE", "3s"}, {"GRACE", "soon"}, {"DEBUG", "maybe"}, {"MAX", "0x10"}, {"MAX", "1e400"},
		{"SERVICE", "a=b,c=d"}, {"FIXED", "env"}, {"CONFIG", "x.yaml"}, {"PORT", "tcp://1.2.3.4:5"}, {"GRACE", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		fs, fixed := fuzzFlags()
		if err := fs.Parse([]string{"--fixed", "cli"}); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"T_" + name: value}
		lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
		if err := ApplyEnv(fs, "T", lookup); err != nil && !strings.Contains(err.Error(), "T_"+name) {
			t.Fatalf("error %q does not name the variable", err)
		}
		if *fixed != "cli" {
			t.Fatalf("the environment overrode a command-line flag: %q", *fixed)
		}
	})
}
