package suite

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// proc is one run of a daemon in a node namespace (`ip netns exec`, which execs: the pid is the
// daemon's). Output is appended to logPath, so a restarted daemon continues its predecessor's log.
type proc struct {
	name    string
	ns      string
	argv    []string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has been reaped
}

func startProc(name, ns, logPath string, argv []string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	fmt.Fprintf(f, "=== %s start: %s\n", time.Now().Format("15:04:05.000"), strings.Join(argv, " "))
	full := append([]string{"ip", "netns", "exec", ns}, argv...)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group (a terminal's Ctrl-C reaches only this process, which cleans up in
	// order), and SIGKILL if this process dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, ns: ns, argv: argv, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { // owned by p: kill and stop wait for done
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// restart starts the same command again; p must have exited.
func (p *proc) restart() (*proc, error) {
	return startProc(p.name, p.ns, p.logPath, p.argv)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// kill sends SIGKILL and waits until the process is reaped. Idempotent.
func (p *proc) kill() {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) exitStatus() string {
	if !p.exited() {
		return "running"
	}
	return p.cmd.ProcessState.String()
}

// logSize is where the log ends now; logLines reads from such an offset.
func logSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// logLines returns up to max lines written to path after offset that contain any of the words
// (case-insensitive), and how many matched in all.
func logLines(path string, offset int64, max int, words ...string) ([]string, int) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, 0
	}
	var out []string
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		low := strings.ToLower(line)
		for _, w := range words {
			if strings.Contains(low, w) {
				n++
				if len(out) < max {
					if len(line) > 400 {
						line = line[:400] + "…"
					}
					out = append(out, line)
				}
				break
			}
		}
	}
	return out, n
}
