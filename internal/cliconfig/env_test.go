package cliconfig

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func envLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestEnvName(t *testing.T) {
	for in, want := range map[string]string{
		"agent-listen": "KASD_AGENT_LISTEN", "fleet": "KASD_FLEET", "api-jwt-secret-file": "KASD_API_JWT_SECRET_FILE",
	} {
		if got := EnvName("KASD", in); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPrecedence: command line > environment > config file > default, for scalars and lists.
func TestPrecedence(t *testing.T) {
	fs := flag.NewFlagSet("kasd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cli := fs.String("cli", "default", "")
	env := fs.String("env", "default", "")
	file := fs.String("file", "default", "")
	def := fs.String("def", "default", "")
	grace := fs.Duration("grace", time.Second, "")
	fleet := fs.Bool("fleet", true, "")
	var list StringList
	fs.Var(&list, "etcd-endpoints", "")
	if err := fs.Parse([]string{"--cli", "from-cli"}); err != nil {
		t.Fatal(err)
	}
	environ := map[string]string{
		"KASD_CLI": "from-env", "KASD_ENV": "from-env", "KASD_GRACE": "3s", "KASD_FLEET": "false",
		"KASD_ETCD_ENDPOINTS": "http://a:2379, http://b:2379",
		"KASD_PORT":           "tcp://10.0.0.1:8151", // a Kubernetes service link: no such flag, ignored
		"OTHER_FILE":          "x",
	}
	if err := ApplyEnv(fs, "KASD", envLookup(environ)); err != nil {
		t.Fatal(err)
	}
	cfg := "cli: from-file\nenv: from-file\nfile: from-file\ngrace: 9s\netcd-endpoints: [http://c:2379]\n"
	if err := ApplyBytes(fs, "c.yaml", []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	if *cli != "from-cli" || *env != "from-env" || *file != "from-file" || *def != "default" {
		t.Errorf("cli=%q env=%q file=%q def=%q", *cli, *env, *file, *def)
	}
	if *grace != 3*time.Second || *fleet {
		t.Errorf("grace=%v fleet=%v: the environment must win over the file and the default", *grace, *fleet)
	}
	if want := (StringList{"http://a:2379", "http://b:2379"}); !reflect.DeepEqual(list, want) {
		t.Errorf("etcd-endpoints = %v, want %v (environment only, comma-separated)", list, want)
	}
}

// TestEnvAliases: a flag given on the command line under another name (-o for --out, --service
// for --services) is not set again from the environment or the file.
func TestEnvAliases(t *testing.T) {
	fs := flag.NewFlagSet("kasctl", flag.ContinueOnError)
	out := fs.String("out", "", "")
	fs.StringVar(out, "o", "", "")
	var svcs StringList
	fs.Var(&svcs, "service", "")
	fs.Var(&svcs, "services", "")
	if err := fs.Parse([]string{"-o", "cli", "--service", "a=http://a"}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs, "X", envLookup(map[string]string{"X_OUT": "env", "X_O": "env", "X_SERVICES": "b=http://b"})); err != nil {
		t.Fatal(err)
	}
	if err := ApplyBytes(fs, "c.yaml", []byte("services: {c: http://c}\nout: file\n")); err != nil {
		t.Fatal(err)
	}
	if *out != "cli" || !reflect.DeepEqual(svcs, StringList{"a=http://a"}) {
		t.Fatalf("out=%q services=%v: the command line must win over its aliases", *out, svcs)
	}
}

func TestEnvErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		env  map[string]string
		want string
	}{
		"duration": {map[string]string{"KASD_ROUTE_TIMEOUT": "soon"}, `environment variable KASD_ROUTE_TIMEOUT="soon" (--route-timeout)`},
		"bool":     {map[string]string{"KASD_FLEET": "maybe"}, `environment variable KASD_FLEET="maybe" (--fleet)`},
		"int":      {map[string]string{"KASD_MAX_AGENT_CONNECTIONS": "many"}, `KASD_MAX_AGENT_CONNECTIONS`},
		"empty":    {map[string]string{"KASD_ROUTE_TIMEOUT": ""}, `KASD_ROUTE_TIMEOUT=""`},
	} {
		t.Run(name, func(t *testing.T) {
			fs := flag.NewFlagSet("kasd", flag.ContinueOnError)
			fs.Duration("route-timeout", time.Second, "")
			fs.Bool("fleet", true, "")
			fs.Int("max-agent-connections", 1, "")
			_ = fs.Parse(nil)
			err := ApplyEnv(fs, "KASD", envLookup(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestEnvNeverSetsVersion: KASD_VERSION (a common variable in deployments) does not turn the
// daemon into --version.
func TestEnvNeverSetsVersion(t *testing.T) {
	fs := flag.NewFlagSet("kasd", flag.ContinueOnError)
	v := fs.Bool("version", false, "")
	_ = fs.Parse(nil)
	if err := ApplyEnv(fs, "KASD", envLookup(map[string]string{"KASD_VERSION": "true"})); err != nil || *v {
		t.Fatalf("version=%v err=%v", *v, err)
	}
}

func TestSetUsage(t *testing.T) {
	fs := flag.NewFlagSet("kasd", flag.ContinueOnError)
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Duration("route-timeout", time.Second, "how long")
	SetUsage(fs, "KASD", "route-timeout")
	if err := fs.Parse([]string{"-h"}); err != flag.ErrHelp {
		t.Fatal(err)
	}
	for _, want := range []string{"usage: kasd [flags]", "KASD_ROUTE_TIMEOUT", "-route-timeout"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, b.String())
		}
	}
}

// TestExplainDurations: a duration without a unit is explained wherever it is given (the flag
// package said "parse error"), the usage still names the flag's type, and an alias of a
// duration flag given on the command line still counts as given.
func TestExplainDurations(t *testing.T) {
	newFS := func() (*flag.FlagSet, *time.Duration) {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		d := new(time.Duration)
		fs.DurationVar(d, "wait", time.Second, "how long")
		fs.DurationVar(d, "w", time.Second, "short for --wait")
		fs.Int("n", 1, "a number")
		ExplainDurations(fs)
		return fs, d
	}
	const want = "want a duration with a unit"
	fs, _ := newFS()
	if err := fs.Parse([]string{"--wait", "5"}); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("command line: %v", err)
	}
	fs, _ = newFS()
	if err := ApplyEnv(fs, "X", func(string) (string, bool) { return "5", true }); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "X_WAIT") {
		t.Fatalf("environment: %v", err)
	}
	fs, _ = newFS()
	if err := ApplyBytes(fs, "f.yaml", []byte("wait: 5\n")); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("config file: %v", err)
	}
	fs, d := newFS()
	if err := fs.Parse([]string{"-w", "3s"}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs, "X", func(string) (string, bool) { return "9s", true }); err != nil || *d != 3*time.Second {
		t.Fatalf("alias given on the command line: %v, %v (the environment must not override it)", err, *d)
	}
	var b strings.Builder
	fs.SetOutput(&b)
	PrintDefaults(fs)
	if !strings.Contains(b.String(), "-wait duration") || strings.Contains(b.String(), "value") {
		t.Fatalf("usage:\n%s", b.String())
	}
	if err := fs.Parse([]string{"--wait", "5"}); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("after PrintDefaults: %v", err)
	}
}
