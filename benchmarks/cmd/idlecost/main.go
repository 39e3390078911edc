// Command idlecost measures what one idle agent connection costs a real kasd process: it starts
// bin/kasd (standalone, on loopback, --pprof), connects N real agents (agentd's connection code,
// one UDP socket each, package benchmarks/fleetsim) from this process, waits until kasd holds
// them all and the start has settled, and prints kasd's RSS, Go heap and stack figures and
// goroutines per connection (from kasd's /metrics and /proc), and, over an idle window, kasd's
// CPU and context switches per keep-alive period and agent, the datagrams to and from kasd per
// period and agent (counted by an nftables table of its own, when run as root) and, with
// --cpu-profile, kasd's CPU profile. It is the quick loop for issue 14's idle-cost work; `make
// bench-scale` is the full scenario (network namespaces, restart storm). The window should be
// longer than the keep-alive period (the default is two periods), and start after the path MTU
// discovery of the agents' connections is over (the default settle is five periods).
//
//	go run ./benchmarks/cmd/idlecost --kasd bin/kasd --agents 1000 --keep-alive 5s --idle 30s
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/benchmarks/fleetsim"
	"github.com/qkas/qkas/quic"
)

func main() {
	kasdBin := flag.String("kasd", "bin/kasd", "kasd binary")
	n := flag.Int("agents", 1000, "idle agents")
	ka := flag.Duration("keep-alive", quic.DefaultAgentKeepAlivePeriod, "agents' and kasd's keep-alive period")
	idle := flag.Duration("idle", 0, "CPU window after the fleet settled (0: 2 keep-alive periods)")
	settle := flag.Duration("settle", 0, "wait after the last agent connected before measuring (0: 5 keep-alive periods, past path MTU discovery)")
	rate := flag.Float64("rate", 500, "agents started per second")
	profile := flag.String("heap-profile", "", "write kasd's heap profile (after a GC) here")
	extra := flag.String("kasd-flags", "", "extra kasd flags, space-separated")
	env := flag.String("kasd-env", "", "extra kasd environment, space-separated K=V")
	cpuProfile := flag.String("cpu-profile", "", "write kasd's CPU profile over the idle window here")
	flag.StringVar(&fleetCPUProfile, "fleet-cpu-profile", "", "write the agents' (this process's) CPU profile over the idle window here")
	flag.StringVar(&fleetHeapProfile, "fleet-heap-profile", "", "write the agents' (this process's) heap profile, after two GCs, here")
	flag.Parse()
	if *settle == 0 {
		// quic-go's path MTU discovery sends its probes (about 4 from each side, each
		// acknowledged) when a connection next sends anything: on an idle connection, on its
		// first 4 keep-alives. A window inside that search counts 2.5 datagrams to kasd and 1.8
		// from it per period instead of 1 and 1 (docs/scale.md).
		*settle = 5 * *ka
	}
	if *idle == 0 {
		*idle = 2 * *ka
	}
	if err := run(*kasdBin, *n, *ka, *idle, *settle, *rate, *profile, *cpuProfile, strings.Fields(*extra), strings.Fields(*env)); err != nil {
		fmt.Fprintln(os.Stderr, "idlecost:", err)
		os.Exit(1)
	}
}

func freePort(network string) string {
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		defer pc.Close()
		return pc.LocalAddr().String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The agents' own profiles: the fleet simulator's cost per agent limits how large a fleet one
// machine can simulate beside kasd.
var fleetCPUProfile, fleetHeapProfile string

func run(kasdBin string, n int, ka, idle, settle time.Duration, rate float64, profile, cpuProfile string, extra, env []string) error {
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) != nil && unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	dir, err := os.MkdirTemp("", "idlecost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	_, caFile, err := quic.DevCertificate(filepath.Join(dir, "tls"), []string{"127.0.0.1"})
	if err != nil {
		return err
	}
	var tb strings.Builder
	tb.WriteString("agents:\n")
	agents := make([]fleetsim.Agent, n)
	for i := range agents {
		tok := auth.NewAgentToken()
		agents[i] = fleetsim.Agent{ID: fmt.Sprintf("sim-%d", i), Token: tok}
		fmt.Fprintf(&tb, "- id: %s\n  token_sha256: %s\n", agents[i].ID, auth.TokenSHA256(tok))
	}
	tokensFile := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokensFile, []byte(tb.String()), 0o600); err != nil {
		return err
	}
	secret := filepath.Join(dir, "jwt.secret")
	if err := os.WriteFile(secret, []byte("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIzNA==\n"), 0o600); err != nil {
		return err
	}
	agentAddr, obs, pp := freePort("udp"), freePort("tcp"), freePort("tcp")
	argv := append([]string{"--fleet=false", "--agent-listen", agentAddr, "--agent-listen-tcp", "off",
		"--api-listen", freePort("tcp"), "--observability-listen", obs, "--pprof", "--pprof-listen", pp,
		"--data-dir", filepath.Join(dir, "data"), "--agent-tokens-file", tokensFile, "--api-jwt-secret-file", secret,
		"--tls-cert-file", filepath.Join(dir, "tls", quic.DevServerFile), "--tls-key-file", filepath.Join(dir, "tls", quic.DevServerKeyFile),
		"--log-level", "warn", "--log-format", "json",
		"--agent-keep-alive-period", ka.String(), "--agent-idle-timeout", (3 * ka).String()}, extra...)
	cmd := exec.Command(kasdBin, argv...)
	cmd.Env = append(os.Environ(), env...)
	logf, _ := os.Create(filepath.Join(dir, "kasd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(unix.SIGKILL)
		_ = cmd.Wait()
		if b, _ := os.ReadFile(filepath.Join(dir, "kasd.log")); len(b) > 0 {
			fmt.Fprintf(os.Stderr, "kasd log tail:\n%s\n", tail(string(b), 1500))
		}
	}()
	pid := cmd.Process.Pid
	for i := 0; ; i++ {
		if _, err := metric(obs, "kasd_agent_connections"); err == nil {
			break
		}
		if i > 200 {
			return fmt.Errorf("kasd not up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	rss0 := rssKiB(pid)
	g0, _ := metric(obs, "go_goroutines")

	tlsConf, err := quic.ClientTLSConfig(caFile, "127.0.0.1", api.ALPNAgent)
	if err != nil {
		return err
	}
	log := zerolog.Nop()
	f, err := fleetsim.New(fleetsim.Config{KasAddresses: []string{agentAddr}, TLS: tlsConf, Agents: agents,
		QUIC: quic.Config{KeepAlivePeriod: ka, MaxIdleTimeout: 3 * ka}, Log: &log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, rate) }()
	defer func() { cancel(); <-done }()
	start := time.Now()
	for {
		v, _ := metric(obs, "kasd_agent_connections")
		if int(v) >= n {
			break
		}
		if time.Since(start) > time.Duration(float64(n)/rate*float64(time.Second))+90*time.Second {
			return fmt.Errorf("only %v of %d connected", v, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("connected %d in %.1fs\n", n, time.Since(start).Seconds())
	time.Sleep(settle)
	// CPU (and, with nftables, datagrams each way) over the idle window.
	port := agentAddr[strings.LastIndexByte(agentAddr, ':')+1:]
	counting := startCounting(port)
	defer counting.stop()
	var profDone chan error
	if cpuProfile != "" {
		profDone = make(chan error, 1)
		go func() {
			profDone <- fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pp, int(idle.Seconds())), cpuProfile)
		}()
	}
	if fleetCPUProfile != "" {
		pf, err := os.Create(fleetCPUProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
	}
	in0, out0 := counting.read()
	sw0 := ctxSwitches(pid)
	self0 := cpuTicks(os.Getpid())
	c0, t0 := cpuTicks(pid), time.Now()
	time.Sleep(idle)
	c1, t1 := cpuTicks(pid), time.Now()
	self1 := cpuTicks(os.Getpid())
	if fleetCPUProfile != "" {
		pprof.StopCPUProfile()
	}
	sw1 := ctxSwitches(pid)
	in1, out1 := counting.read()
	if profDone != nil {
		if err := <-profDone; err != nil {
			fmt.Fprintln(os.Stderr, "idlecost: cpu profile:", err)
		}
	}
	cpuS := float64(c1-c0) / 100
	pct := 100 * cpuS / t1.Sub(t0).Seconds()
	exch := float64(n) * t1.Sub(t0).Seconds() / ka.Seconds()
	rss1 := rssKiB(pid)
	g1, _ := metric(obs, "go_goroutines")
	conns, _ := metric(obs, "kasd_agent_connections")
	heapInuse, _ := metric(obs, "go_memstats_heap_inuse_bytes")
	heapAlloc, _ := metric(obs, "go_memstats_heap_alloc_bytes")
	heapIdle, _ := metric(obs, "go_memstats_heap_idle_bytes")
	heapRel, _ := metric(obs, "go_memstats_heap_released_bytes")
	stack, _ := metric(obs, "go_memstats_stack_inuse_bytes")
	per := func(b float64) float64 { return b / 1024 / float64(n) }
	fmt.Printf("agents %d (kasd holds %v) keep-alive %v\n", n, conns, ka)
	fmt.Printf("RSS per agent        %6.1f KiB  (%d -> %d KiB)\n", float64(rss1-rss0)/float64(n), rss0, rss1)
	fmt.Printf("goroutines per conn  %6.2f      (%v -> %v)\n", (g1-g0)/float64(n), g0, g1)
	fmt.Printf("heap inuse per agent %6.1f KiB, alloc %6.1f KiB, idle-not-released %6.1f KiB, stacks %5.1f KiB (totals; kasd before agents included)\n",
		per(heapInuse), per(heapAlloc), per(heapIdle-heapRel), per(stack))
	fmt.Printf("CPU idle             %6.2f %% of a core, %.0f µs per keep-alive exchange (%.0f exchanges)\n", pct, cpuS*1e6/exch, exch)
	fmt.Printf("context switches     %6.2f per keep-alive exchange (kasd's threads, voluntary + involuntary: how often its Ms sleep and wake)\n", float64(sw1-sw0)/exch)
	if counting.ok {
		periods := float64(n) * t1.Sub(t0).Seconds() / ka.Seconds()
		fmt.Printf("datagrams per agent per keep-alive period: %.2f to kasd, %.2f from kasd (%d, %d in the window)\n",
			float64(in1-in0)/periods, float64(out1-out0)/periods, in1-in0, out1-out0)
	}
	// Live heap after two collections: the first moves sync.Pools' contents to their victim
	// caches, the second frees them, so what is left is what the connections hold.
	for i := 0; i < 2; i++ {
		resp, err := http.Get("http://" + pp + "/debug/pprof/heap?gc=1")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if profile != "" && i == 1 {
			_ = os.WriteFile(profile, b, 0o644)
		}
	}
	selfS := float64(self1-self0) / 100
	fmt.Printf("agents' CPU idle     %6.2f %% of a core, %.0f µs per keep-alive exchange (this process: the fleet's side)\n",
		100*selfS/t1.Sub(t0).Seconds(), selfS*1e6/exch)
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("agents' after 2 GCs  live heap %5.1f KiB + stacks %5.1f KiB per agent, RSS %5.1f KiB per agent (this process)\n",
		per(float64(ms.HeapAlloc)), per(float64(ms.StackInuse)), float64(rssKiB(os.Getpid()))/float64(n))
	if fleetHeapProfile != "" {
		hf, err := os.Create(fleetHeapProfile)
		if err != nil {
			return err
		}
		err = pprof.Lookup("heap").WriteTo(hf, 0)
		if cerr := hf.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	hl, _ := metric(obs, "go_memstats_heap_alloc_bytes")
	st, _ := metric(obs, "go_memstats_stack_inuse_bytes")
	fmt.Printf("after 2 GCs          live heap %5.1f KiB + stacks %5.1f KiB per agent (totals incl. kasd's base), RSS %5.1f KiB per agent\n",
		per(hl), per(st), float64(rssKiB(pid)-rss0)/float64(n))
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name) {
			continue
		}
		rest := l[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("no %s", name)
	}
	return sum, nil
}

func rssKiB(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.Atoi(strings.Fields(l)[1])
			return v
		}
	}
	return 0
}

func cpuTicks(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func fetch(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return os.WriteFile(file, b, 0o644)
}

// packetCounter counts the UDP datagrams to and from kasd's agent port with an nftables table
// of its own (root only; ok is false without it). On loopback each datagram passes the output
// hook once.
type packetCounter struct {
	table string
	ok    bool
}

func startCounting(port string) *packetCounter {
	c := &packetCounter{table: fmt.Sprintf("idlecost_%d", os.Getpid())}
	rules := fmt.Sprintf(`table inet %s {
	chain out {
		type filter hook output priority 0; policy accept;
		udp dport %s counter comment "in"
		udp sport %s counter comment "out"
	}
}
`, c.table, port, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "idlecost: no datagram counts (nft: %v %s)\n", err, strings.TrimSpace(string(out)))
		return c
	}
	c.ok = true
	return c
}

// read returns the datagrams counted to and from kasd so far.
func (c *packetCounter) read() (in, out int64) {
	if !c.ok {
		return 0, 0
	}
	b, err := exec.Command("nft", "list", "table", "inet", c.table).Output()
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "packets" {
				v, _ := strconv.ParseInt(f[i+1], 10, 64)
				if strings.Contains(l, `"in"`) {
					in = v
				} else if strings.Contains(l, `"out"`) {
					out = v
				}
			}
		}
	}
	return in, out
}

func (c *packetCounter) stop() {
	if c.ok {
		_ = exec.Command("nft", "delete", "table", "inet", c.table).Run()
	}
}

// ctxSwitches sums the context switches of every thread of pid.
func ctxSwitches(pid int) int64 {
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	var n int64
	for _, d := range dirs {
		b, _ := os.ReadFile(d)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "voluntary_ctxt_switches:") || strings.HasPrefix(l, "nonvoluntary_ctxt_switches:") {
				v, _ := strconv.ParseInt(strings.TrimSpace(l[strings.IndexByte(l, ':')+1:]), 10, 64)
				n += v
			}
		}
	}
	return n
}
