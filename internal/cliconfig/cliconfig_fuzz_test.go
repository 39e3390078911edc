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
