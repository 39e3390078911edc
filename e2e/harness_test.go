package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Bounds for waits. They are generous because a loaded 2-core CI machine may take seconds to start
// a process; a healthy run never gets near them.
const (
	readyTimeout = 30 * time.Second // a daemon's /readyz turns 200
	stopTimeout  = 40 * time.Second // SIGTERM to exit (kasd's drain is bounded by --shutdown-grace)
	waitTimeout  = 30 * time.Second // any other condition polled with waitFor
	pollInterval = 50 * time.Millisecond
)

// binDir holds kasd, agentd and kasctl: built by TestMain, or $QKAS_BIN_DIR.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips itself; do not spend a build on nothing
	}
	binDir = os.Getenv("QKAS_BIN_DIR")
	var built string
	if binDir == "" {
		var err error
		if built, err = os.MkdirTemp("", "qkas-e2e-bin"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		if err := buildBinaries(built); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: building binaries:", err)
			os.RemoveAll(built)
			os.Exit(1)
		}
		binDir = built
	} else if abs, err := filepath.Abs(binDir); err == nil {
		binDir = abs
	}
	code := m.Run()
	if code == 0 {
		// Every Proc's waiter goroutine must be gone: a leftover one is a process nobody reaped.
		if err := goleak.Find(goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutine leak:", err)
			code = 1
		}
	}
	if built != "" {
		os.RemoveAll(built)
	}
	os.Exit(code)
}

// buildBinaries builds the three commands into dir, like `make build` (without -trimpath, so that
// a panic's stack trace points at the source).
func buildBinaries(dir string) error {
	start := time.Now()
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version=e2e", "-o", dir+string(os.PathSeparator),
		"./kasd/cmd/kasd", "./agentd/cmd/agentd", "./kasctl")
	cmd.Dir = ".." // the module root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "e2e: built kasd, agentd, kasctl in %v\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// skipShort skips a test under `go test -short`.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: skipped with -short")
	}
}

// bin returns the path of one of the built commands.
func bin(name string) string { return filepath.Join(binDir, name) }

// --- processes ---

// Proc is a process started by a test. Its stdout and stderr go to LogPath.
type Proc struct {
	Name    string
	LogPath string
	Cmd     *exec.Cmd

	logFrom int64         // where this process's output starts in LogPath (a restart appends)
	done    chan struct{} // closed when the process has been reaped
	err     error         // cmd.Wait's result; read after done
}

// startProc starts bin with args in dir (the test's working directory when empty). The process is
// in its own process group, and t.Cleanup SIGKILLs the group and reaps the process, so nothing a
// test starts outlives it; when the test failed, the tail of the log is printed.
func startProc(t *testing.T, name, dir string, env []string, bin string, args ...string) *Proc {
	t.Helper()
	logPath := filepath.Join(logDir(t), name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	logFrom, _ := logf.Seek(0, io.SeekEnd)
	fmt.Fprintf(logf, "=== %s: %s %s\n", time.Now().Format(time.TimeOnly), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	logf.Close() // the child has its own descriptor
	p := &Proc{Name: name, LogPath: logPath, Cmd: cmd, logFrom: logFrom, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.killGroup()
		<-p.done
		// A restarted daemon appends to its predecessor's file: print each file once, from the
		// last process's cleanup (cleanups run last-in first-out).
		if t.Failed() && firstTime(t, logPath) {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- last lines of %s:\n%s", logPath, lastLines(string(b), 60))
		}
	})
	return p
}

// logDir is a per-test directory for process logs: a temporary one, or one under
// $QKAS_E2E_LOG_DIR that is emptied when the test starts and kept afterwards.
func logDir(t *testing.T) string {
	logDirs.Lock()
	defer logDirs.Unlock()
	if e, ok := logDirs.m[t]; ok {
		return e.dir
	}
	var d string
	if root := os.Getenv("QKAS_E2E_LOG_DIR"); root != "" {
		d = filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"))
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		d = t.TempDir()
	}
	logDirs.m[t] = &testLogs{dir: d, printed: map[string]bool{}}
	t.Cleanup(func() { // registered before any Proc's cleanup, so it runs after them
		logDirs.Lock()
		delete(logDirs.m, t)
		logDirs.Unlock()
	})
	return d
}

var logDirs = struct {
	sync.Mutex
	m map[*testing.T]*testLogs
}{m: map[*testing.T]*testLogs{}}

type testLogs struct {
	dir     string
	printed map[string]bool // log files whose tail was printed
}

func (p *Proc) killGroup() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status once Done is closed; -1 if a signal ended the process.
func (p *Proc) ExitCode() int {
	<-p.done
	return p.Cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM and waits for the exit; after stopTimeout it SIGKILLs and fails the test.
// It returns the exit code.
func (p *Proc) Stop(t *testing.T) int {
	t.Helper()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.killGroup()
		<-p.done
		t.Fatalf("%s did not exit within %v of SIGTERM", p.Name, stopTimeout)
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Kill ends the process abruptly (SIGKILL, no drain) and waits for it.
func (p *Proc) Kill() {
	p.killGroup()
	<-p.done
}

// Log returns everything this process wrote so far (not what an earlier process with the same
// name wrote to the same file).
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	if int64(len(b)) < p.logFrom {
		return ""
	}
	return string(b[p.logFrom:])
}

func (p *Proc) tail(n int) string { return lastLines(p.Log(), n) }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// firstTime reports whether this is the first call for key in test t (t must have called logDir).
func firstTime(t *testing.T, key string) bool {
	logDirs.Lock()
	defer logDirs.Unlock()
	e := logDirs.m[t]
	if e == nil || e.printed[key] {
		return false
	}
	e.printed[key] = true
	return true
}

// WaitLog waits until the log contains all of substrs on one line and returns that line.
func (p *Proc) WaitLog(t *testing.T, substrs ...string) string {
	t.Helper()
	var found string
	waitFor(t, fmt.Sprintf("%s logs a line with %q", p.Name, substrs), func() bool {
		found = p.logLine(substrs...)
		return found != ""
	})
	return found
}

// logLine returns the first log line containing all of substrs, or "".
func (p *Proc) logLine(substrs ...string) string {
	sc := bufio.NewScanner(strings.NewReader(p.Log()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !slices.ContainsFunc(substrs, func(s string) bool { return !strings.Contains(line, s) }) {
			return line
		}
	}
	return ""
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", waitTimeout, what)
		}
		time.Sleep(pollInterval)
	}
}

// waitReady polls url until it answers 200, failing the test if p exits first or readyTimeout
// passes.
func waitReady(t *testing.T, p *Proc, url string) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		status, _ := probe(url)
		if status == http.StatusOK {
			return
		}
		if p.Exited() {
			t.Fatalf("%s exited (code %d) before %s was ready:\n%s", p.Name, p.ExitCode(), url, p.tail(20))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v (last status %d at %s)", p.Name, readyTimeout, status, url)
		}
		time.Sleep(pollInterval)
	}
}

// probe GETs url without a token; status 0 means no answer.
func probe(url string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// --- ports ---

var givenPorts = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// freeAddr returns "127.0.0.1:PORT" for a port that is free for network ("tcp" or "udp") now and
// was not returned before in this test binary. Another process may still take it before the
// daemon binds it; the window is small.
func freeAddr(t *testing.T, network string) string {
	t.Helper()
	for range 100 {
		var addr string
		switch network {
		case "tcp":
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = ln.Addr().String()
			ln.Close()
		case "udp":
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = pc.LocalAddr().String()
			pc.Close()
		default:
			t.Fatalf("freeAddr: network %q", network)
		}
		givenPorts.Lock()
		dup := givenPorts.m[network+addr]
		givenPorts.m[network+addr] = true
		givenPorts.Unlock()
		if !dup {
			return addr
		}
	}
	t.Fatal("freeAddr: no fresh port")
	return ""
}

// --- daemons ---

// KasdOpts configures startKasd. Empty addresses get free loopback ports.
type KasdOpts struct {
	Dir           string // working directory; relative paths below are relative to it
	DataDir       string // --data-dir; default "kasd-data" (in Dir)
	TokensFile    string // --agent-tokens-file
	JWTSecretFile string // --api-jwt-secret-file
	AgentAddr     string // --agent-listen (UDP)
	APIAddr       string // --api-listen
	ObsAddr       string // --observability-listen
	// Fleet flags, passed only when this kasd binary has them (see hasFlag); empty addresses
	// get free loopback ports so that tests never share the default :8152 or 127.0.0.1:2379.
	PeerAddr       string   // --peer-listen (UDP)
	EtcdClientAddr string   // --embedded-etcd-listen
	EtcdPeerAddr   string   // --embedded-etcd-peer-listen
	Config         string   // --config
	InConfig       bool     // the fields above are set in Config: record them, pass no flags
	Args           []string // more flags, after the others (they win over Config)
	Name           string   // for logs; default "kasd"
	NoWaitReady    bool     // return at once instead of waiting for /readyz
}

// Kasd is a running kasd.
type Kasd struct {
	*Proc
	Opts KasdOpts // the options it was started with, addresses filled in
}

// APIURL is the base URL of the client API.
func (k *Kasd) APIURL() string { return "http://" + k.Opts.APIAddr }

// ObsURL is the base URL of the observability endpoint.
func (k *Kasd) ObsURL() string { return "http://" + k.Opts.ObsAddr }

// ProxyURL is the API URL that reaches path on service of agent.
func (k *Kasd) ProxyURL(agent, service, path string) string {
	return fmt.Sprintf("%s/api/v1/agents/%s/proxy/%s/%s", k.APIURL(), agent, service, strings.TrimPrefix(path, "/"))
}

// DataDir is the absolute path of kasd's --data-dir.
func (k *Kasd) DataDir() string {
	if filepath.IsAbs(k.Opts.DataDir) {
		return k.Opts.DataDir
	}
	return filepath.Join(k.Opts.Dir, k.Opts.DataDir)
}

// CAFile is where kasd writes its development CA (absolute).
func (k *Kasd) CAFile() string { return filepath.Join(k.DataDir(), "ca.pem") }

// startKasd starts kasd and waits until its /readyz answers 200.
func startKasd(t *testing.T, o KasdOpts) *Kasd {
	t.Helper()
	if o.Name == "" {
		o.Name = "kasd"
	}
	if o.DataDir == "" {
		o.DataDir = "kasd-data"
	}
	if o.AgentAddr == "" {
		o.AgentAddr = freeAddr(t, "udp")
	}
	if o.APIAddr == "" {
		o.APIAddr = freeAddr(t, "tcp")
	}
	if o.ObsAddr == "" {
		o.ObsAddr = freeAddr(t, "tcp")
	}
	if hasFlag(t, "kasd", "peer-listen") && o.PeerAddr == "" {
		o.PeerAddr = freeAddr(t, "udp")
	}
	if hasFlag(t, "kasd", "embedded-etcd-listen") && o.EtcdClientAddr == "" {
		o.EtcdClientAddr, o.EtcdPeerAddr = freeAddr(t, "tcp"), freeAddr(t, "tcp")
	}
	var args []string
	add := func(flag, v string) {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	add("--config", o.Config)
	add("--peer-listen", o.PeerAddr)
	add("--embedded-etcd-listen", o.EtcdClientAddr)
	add("--embedded-etcd-peer-listen", o.EtcdPeerAddr)
	if !o.InConfig {
		add("--agent-tokens-file", o.TokensFile)
		add("--api-jwt-secret-file", o.JWTSecretFile)
		add("--data-dir", o.DataDir)
		add("--agent-listen", o.AgentAddr)
		add("--api-listen", o.APIAddr)
		add("--observability-listen", o.ObsAddr)
	}
	args = append(args, o.Args...)
	k := &Kasd{Proc: startProc(t, o.Name, o.Dir, nil, bin("kasd"), args...), Opts: o}
	if !o.NoWaitReady {
		waitReady(t, k.Proc, k.ObsURL()+"/readyz")
	}
	return k
}

// hasFlag reports whether command (kasd or agentd) has --name, from its -h output (read once).
// The harness passes optional flags only to binaries that know them, so it works with the
// binaries of older and newer commits.
func hasFlag(t *testing.T, command, name string) bool {
	t.Helper()
	helpTexts.Lock()
	help, ok := helpTexts.m[command]
	if !ok {
		out, _ := exec.Command(bin(command), "-h").CombinedOutput() // -h exits 0 or 2, both fine
		help = string(out)
		helpTexts.m[command] = help
	}
	helpTexts.Unlock()
	if !strings.Contains(help, "-observability-listen") {
		t.Fatalf("%s -h printed no flags:\n%s", command, help)
	}
	return strings.Contains(help, "\n  -"+name+" ") || strings.Contains(help, "\n  -"+name+"\n")
}

var helpTexts = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// Restart starts a new kasd process with the same options (same ports and data dir) after this
// one has exited.
func (k *Kasd) Restart(t *testing.T) *Kasd {
	t.Helper()
	if !k.Exited() {
		t.Fatalf("%s: Restart while it runs", k.Name)
	}
	return startKasd(t, k.Opts)
}

// AgentdOpts configures startAgentd.
type AgentdOpts struct {
	Dir             string            // working directory
	KasAddrs        []string          // --kas-address, one flag each
	TokenFile       string            // --token-file
	CAFile          string            // --ca-file
	Services        map[string]string // --service NAME=URL
	ObsAddr         string            // --observability-listen; default a free port
	GitlabProxyAddr string            // --gitlab-proxy-listen, when agentd has it; default a free port
	Config          string            // --config
	Args            []string          // more flags
	Name            string            // for logs; default "agentd"
	NoWaitReady     bool              // return at once instead of waiting until it is connected
}

// Agentd is a running agentd.
type Agentd struct {
	*Proc
	Opts AgentdOpts
}

// ObsURL is the base URL of agentd's observability endpoint.
func (a *Agentd) ObsURL() string { return "http://" + a.Opts.ObsAddr }

// Connected reports whether agentd's /readyz says it holds a connection to kasd.
func (a *Agentd) Connected() bool {
	status, _ := probe(a.ObsURL() + "/readyz")
	return status == http.StatusOK
}

// WaitConnected waits until agentd's /readyz answers 200 (it holds a connection to kasd).
func (a *Agentd) WaitConnected(t *testing.T) {
	t.Helper()
	waitReady(t, a.Proc, a.ObsURL()+"/readyz")
}

// startAgentd starts agentd and, unless NoWaitReady, waits until it is connected to kasd.
func startAgentd(t *testing.T, o AgentdOpts) *Agentd {
	t.Helper()
	if o.Name == "" {
		o.Name = "agentd"
	}
	if o.ObsAddr == "" {
		o.ObsAddr = freeAddr(t, "tcp")
	}
	var args []string
	add := func(flag, v string) {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	add("--config", o.Config)
	for _, a := range o.KasAddrs {
		add("--kas-address", a)
	}
	add("--token-file", o.TokenFile)
	add("--ca-file", o.CAFile)
	names := make([]string, 0, len(o.Services))
	for name := range o.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		add("--service", name+"="+o.Services[name])
	}
	add("--observability-listen", o.ObsAddr)
	if hasFlag(t, "agentd", "gitlab-proxy-listen") && o.GitlabProxyAddr == "" {
		o.GitlabProxyAddr = freeAddr(t, "tcp")
	}
	add("--gitlab-proxy-listen", o.GitlabProxyAddr)
	args = append(args, o.Args...)
	a := &Agentd{Proc: startProc(t, o.Name, o.Dir, []string{"POD_NAME=" + o.Name}, bin("agentd"), args...), Opts: o}
	if !o.NoWaitReady {
		a.WaitConnected(t)
	}
	return a
}

// --- kasctl and secrets ---

// kasctl runs kasctl in dir and returns its stdout; a non-zero exit fails the test.
func kasctl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin("kasctl"), args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kasctl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// Secrets are the files a standalone kasd and its agents need, made with kasctl in Dir.
type Secrets struct {
	Dir           string
	JWTSecretFile string            // base64 secret signing client JWTs
	TokensFile    string            // kasd's --agent-tokens-file
	TokenFiles    map[string]string // agent id -> its --token-file
}

// newSecrets runs `kasctl secret --out` and `kasctl agent-token ID --token-out --tokens-file` for
// each agent, in dir.
func newSecrets(t *testing.T, dir string, agents ...string) *Secrets {
	t.Helper()
	s := &Secrets{
		Dir:           dir,
		JWTSecretFile: filepath.Join(dir, "jwt.secret"),
		TokensFile:    filepath.Join(dir, "tokens.yaml"),
		TokenFiles:    map[string]string{},
	}
	kasctl(t, dir, "secret", "--out", s.JWTSecretFile)
	for _, id := range agents {
		s.TokenFiles[id] = filepath.Join(dir, id+".token")
		kasctl(t, dir, "agent-token", id, "--token-out", s.TokenFiles[id], "--tokens-file", s.TokensFile)
	}
	return s
}

// mintJWT returns a client JWT from `kasctl jwt --secret-file secretFile args...`.
func mintJWT(t *testing.T, secretFile string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(kasctl(t, "", append([]string{"jwt", "--secret-file", secretFile}, args...)...))
}

// --- HTTP ---

// httpClient does not keep connections alive: the tests restart servers, and a pooled connection
// to a dead kasd would only add noise (and goroutines for the leak check).
var httpClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	Timeout:   60 * time.Second,
}

// Response is a finished HTTP exchange.
type Response struct {
	Status int
	Header http.Header
	Body   string
}

// ErrorCode is the "error" field of a qkas JSON error body, or "".
func (r *Response) ErrorCode() string {
	var body struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal([]byte(r.Body), &body)
	return body.Error
}

// get GETs url with `Authorization: Bearer jwt` (none when jwt is empty) and reads the whole body;
// a transport error fails the test.
func get(t *testing.T, url, jwt string) *Response {
	t.Helper()
	r, err := tryGet(url, jwt)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tryGet is get for goroutines other than the test's: it returns the error.
func tryGet(url, jwt string) (*Response, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if jwt != "" {
		req.Header.Set("Authorization", "Bearer "+jwt)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading body: %w", url, err)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: string(body)}, nil
}

// Service is a small HTTP server standing in for an in-cluster service. It answers
// "hello from NAME: METHOD PATH?QUERY" and remembers the Authorization headers it saw.
type Service struct {
	URL string

	mu    sync.Mutex // guards the fields below
	auths []string
}

// startService starts a Service on a free loopback port until the test ends.
func startService(t *testing.T, name string) *Service {
	t.Helper()
	s := &Service{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.auths = append(s.auths, r.Header.Get("Authorization"))
		s.mu.Unlock()
		w.Header().Set("X-Service", name)
		fmt.Fprintf(w, "hello from %s: %s %s", name, r.Method, r.URL.RequestURI())
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// Authorizations returns the Authorization header of every request served so far.
func (s *Service) Authorizations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.auths)
}

// metric scrapes baseURL/metrics and returns the sum of the samples of name whose labels include
// every "key=value" in labels; found is false when no sample matched.
func metric(t *testing.T, baseURL, name string, labels ...string) (sum float64, found bool) {
	t.Helper()
	status, body := probe(baseURL + "/metrics")
	if status != http.StatusOK {
		t.Fatalf("GET %s/metrics: status %d", baseURL, status)
	}
	want := make([]string, len(labels))
	for i, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		want[i] = k + "=" + strconv.Quote(v)
	}
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := cutLast(line, " ")
		if !ok {
			continue
		}
		n, lbls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		lbls = strings.TrimSuffix(lbls, "}")
		have := strings.Split(lbls, ",") // label values here never contain commas
		if slices.ContainsFunc(want, func(w string) bool { return !slices.Contains(have, w) }) {
			continue
		}
		f, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += f
		found = true
	}
	return sum, found
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// waitMetric waits until metric(...) >= min.
func waitMetric(t *testing.T, baseURL string, min float64, name string, labels ...string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s%v >= %v at %s", name, labels, min, baseURL), func() bool {
		v, _ := metric(t, baseURL, name, labels...)
		return v >= min
	})
}
