package cliconfig

import (
	"flag"
	"reflect"
	"strings"
	"testing"
)

func TestApply(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	listen := fs.String("listen", ":1", "")
	grace := fs.Duration("grace", 0, "")
	debug := fs.Bool("debug", false, "")
	var addrs, svcs StringList
	fs.Var(&addrs, "addr", "")
	fs.Var(&svcs, "service", "")
	if err := fs.Parse([]string{"--listen", ":9"}); err != nil {
		t.Fatal(err)
	}
	cfg := "listen: ':5'\ngrace: 3s\ndebug: true\naddr: [a:1, 'b:2,c:3']\nservice: {web: 'http://x', api: 'http://y'}\n"
	if err := ApplyBytes(fs, "c.yaml", []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	if *listen != ":9" {
		t.Errorf("command line must win: listen = %q", *listen)
	}
	if grace.String() != "3s" || !*debug {
		t.Errorf("grace=%v debug=%v", *grace, *debug)
	}
	if want := (StringList{"a:1", "b:2", "c:3"}); !reflect.DeepEqual(addrs, want) {
		t.Errorf("addr = %v", addrs)
	}
	if want := (StringList{"api=http://y", "web=http://x"}); !reflect.DeepEqual(svcs, want) {
		t.Errorf("service = %v", svcs)
	}
}

func TestApplyErrors(t *testing.T) {
	for name, cfg := range map[string]string{
		"unknown key": "nope: 1\n",
		"bad value":   "grace: soon\n",
		"not yaml":    "{{{",
		"config key":  "config: x\n",
		"nested list": "listen: [[1]]\n",
	} {
		t.Run(name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.String("listen", "", "")
			fs.Duration("grace", 0, "")
			fs.String("config", "", "")
			_ = fs.Parse(nil)
			err := ApplyBytes(fs, "c.yaml", []byte(cfg))
			if err == nil || !strings.Contains(err.Error(), "c.yaml") {
				t.Fatalf("err = %v, want an error naming the file", err)
			}
		})
	}
}

func TestPositiveNotNegativeNotZero(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("n", 0, "")
	fs.Int64("n64", 0, "")
	fs.Uint64("u", 0, "")
	fs.Float64("f", 0, "")
	fs.Duration("d", 0, "")
	all := []string{"n", "n64", "u", "f", "d"}
	set := func(v string) {
		t.Helper()
		for _, name := range all {
			val := v
			if name == "u" && v[0] == '-' {
				val = "1" // unsigned
			}
			if name == "d" {
				val += "s"
			}
			if err := fs.Set(name, val); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tt := range []struct {
		value                          string
		positive, notNegative, nonZero bool
	}{
		{"1", true, true, true},
		{"0", false, true, false},
		{"-1", false, false, true},
	} {
		set(tt.value)
		for _, c := range []struct {
			name  string
			check func(*flag.FlagSet, ...string) error
			ok    bool
		}{{"Positive", Positive, tt.positive}, {"NotNegative", NotNegative, tt.notNegative}, {"NotZero", NotZero, tt.nonZero}} {
			err := c.check(fs, all...)
			if (err == nil) != c.ok {
				t.Errorf("%s with %s: %v", c.name, tt.value, err)
			}
			if err != nil && !strings.Contains(err.Error(), "--n64 ") {
				t.Errorf("%s with %s: %v does not name the flag", c.name, tt.value, err)
			}
		}
	}
	for _, v := range []string{"NaN", "Inf"} {
		if err := fs.Set("f", v); err != nil {
			t.Fatal(err)
		}
		if err := NotNegative(fs, "f"); err == nil {
			t.Errorf("NotNegative accepted %s", v)
		}
	}
}

// TestApplyScalarsAsWritten: a scalar reaches Flag.Set as it is written in the file, as it would
// be on the command line. The file was read with YAML 1.1 rules, where off, on, yes, no, y and n
// are booleans: kasd's documented "agent-listen-tcp: off" became "false", and kasd refused to
// start with "listen tcp false: missing port in address" (agentd's "transport: off" or a
// service named "no" would be the same). A bool flag still takes those words.
func TestApplyScalarsAsWritten(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	tcp := fs.String("agent-listen-tcp", "", "")
	name := fs.String("name", "", "")
	sample := fs.Float64("sample", 1, "")
	debug := fs.Bool("debug", false, "")
	fleet := fs.Bool("fleet", true, "")
	empty := fs.String("empty", "x", "")
	var svcs StringList
	fs.Var(&svcs, "service", "")
	_ = fs.Parse(nil)
	cfg := "agent-listen-tcp: off\nname: yes\nsample: .5\ndebug: on\nfleet: No\nempty:\nservice: {n: 'http://n', y: on}\n"
	if err := ApplyBytes(fs, "c.yaml", []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	if *tcp != "off" || *name != "yes" || *sample != 0.5 || !*debug || *fleet || *empty != "" {
		t.Errorf("agent-listen-tcp=%q name=%q sample=%v debug=%v fleet=%v empty=%q", *tcp, *name, *sample, *debug, *fleet, *empty)
	}
	if want := (StringList{"n=http://n", "y=on"}); !reflect.DeepEqual(svcs, want) {
		t.Errorf("service = %v", svcs)
	}
	for name, cfg := range map[string]string{
		"duplicate key": "name: a\nname: b\n",
		"not a map":     "just a string\n",
		"self alias":    "service: &a [*a]\n",
	} {
		if err := ApplyBytes(fs, "c.yaml", []byte(cfg)); err == nil || !strings.Contains(err.Error(), "c.yaml") {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
}
