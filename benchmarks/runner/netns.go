package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netns is a network namespace created with `ip netns add`. A nil *netns is the runner's own
// namespace. Sockets made by Dial and Listen belong to the namespace for their whole life, so
// the runner serves and loads namespaced endpoints in-process without re-executing itself.
type netns struct {
	name string
	fd   *os.File // /run/netns/<name>
}

func (n *netns) String() string {
	if n == nil {
		return ""
	}
	return n.name
}

// do runs f on an OS thread switched into n, then switches the thread back. Only sockets made
// inside f belong to n. If the thread cannot be switched back it is left locked, so the Go
// runtime retires it rather than reuse it in the wrong namespace.
func (n *netns) do(f func() error) error {
	if n == nil {
		return f()
	}
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(n.fd.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.name, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err)) // thread stays locked: retired
	}
	runtime.UnlockOSThread()
	return ferr
}

// Dial connects from inside n.
func (n *netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens inside n.
func (n *netns) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// veth is two namespaces joined by a veth pair, addresses 10.250.0.1/30 (kas side) and
// 10.250.0.2/30 (agent side), with loopback up in each. Nothing is routed to or from the
// runner's own namespace.
type veth struct {
	kas, agent *netns
	kasIf      string
	agentIf    string
}

const (
	vethKasAddr   = "10.250.0.1"
	vethAgentAddr = "10.250.0.2"
)

// checkNetnsTools reports why namespaces cannot be made here, or nil.
func checkNetnsTools() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, veth, nftables)")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install iproute2 nftables)", tool)
		}
	}
	return nil
}

// newVeth creates the namespaces and the veth pair. Names carry the runner's pid so that two
// runs do not collide; close removes them.
func newVeth(ctx context.Context) (*veth, error) {
	if err := checkNetnsTools(); err != nil {
		return nil, err
	}
	removeStaleNetns(ctx)
	id := os.Getpid() % 100000
	v := &veth{
		kasIf:   fmt.Sprintf("qkbk%d", id),
		agentIf: fmt.Sprintf("qkba%d", id),
	}
	kasName, agentName := fmt.Sprintf("qkbench-kas-%d", id), fmt.Sprintf("qkbench-agent-%d", id)
	steps := [][]string{
		{"ip", "netns", "add", kasName},
		{"ip", "netns", "add", agentName},
		{"ip", "link", "add", v.kasIf, "type", "veth", "peer", "name", v.agentIf},
		{"ip", "link", "set", v.kasIf, "netns", kasName},
		{"ip", "link", "set", v.agentIf, "netns", agentName},
		{"ip", "-n", kasName, "addr", "add", vethKasAddr + "/30", "dev", v.kasIf},
		{"ip", "-n", agentName, "addr", "add", vethAgentAddr + "/30", "dev", v.agentIf},
		{"ip", "-n", kasName, "link", "set", v.kasIf, "up"},
		{"ip", "-n", agentName, "link", "set", v.agentIf, "up"},
		{"ip", "-n", kasName, "link", "set", "lo", "up"},
		{"ip", "-n", agentName, "link", "set", "lo", "up"},
	}
	v.kas, v.agent = &netns{name: kasName}, &netns{name: agentName}
	for _, s := range steps {
		if _, err := runCmd(ctx, s...); err != nil {
			v.close()
			return nil, fmt.Errorf("ip netns failed: %w", err)
		}
	}
	for _, n := range []*netns{v.kas, v.agent} {
		f, err := os.Open("/run/netns/" + n.name)
		if err != nil {
			v.close()
			return nil, err
		}
		n.fd = f
	}
	return v, nil
}

// newLoopbackNetns creates a namespace with only loopback, up, named qkbench-<role>-<pid>;
// remove deletes it. Processes and sockets placed in it share nothing with the rest of the
// machine, so its /proc/<pid>/net/snmp counters count only their traffic.
func newLoopbackNetns(ctx context.Context, role string) (*netns, error) {
	if err := checkNetnsTools(); err != nil {
		return nil, err
	}
	removeStaleNetns(ctx)
	n := &netns{name: fmt.Sprintf("qkbench-%s-%d", role, os.Getpid()%100000)}
	if _, err := runCmd(ctx, "ip", "netns", "add", n.name); err != nil {
		return nil, fmt.Errorf("ip netns failed: %w", err)
	}
	if _, err := runCmd(ctx, "ip", "-n", n.name, "link", "set", "lo", "up"); err != nil {
		n.remove()
		return nil, fmt.Errorf("ip netns failed: %w", err)
	}
	f, err := os.Open("/run/netns/" + n.name)
	if err != nil {
		n.remove()
		return nil, err
	}
	n.fd = f
	return n, nil
}

// remove deletes a namespace made by newLoopbackNetns. Safe on nil.
func (n *netns) remove() {
	if n == nil {
		return
	}
	if n.fd != nil {
		n.fd.Close()
	}
	_, _ = runCmd(context.Background(), "ip", "netns", "del", n.name)
}

// removeStaleNetns deletes namespaces left by runs that died (their pid is gone).
func removeStaleNetns(ctx context.Context) {
	out, err := runCmd(ctx, "ip", "netns", "list")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "qkbench-")
		if !ok {
			continue
		}
		_, pid, _ := strings.Cut(rest, "-")
		if _, err := os.Stat("/proc/" + pid); pid != "" && os.IsNotExist(err) {
			_, _ = runCmd(ctx, "ip", "netns", "del", name)
		}
	}
}

// setLoss installs (replacing) an nftables rule in each namespace that drops percent of the
// packets arriving on the veth, chosen by `numgen random`.
func (v *veth) setLoss(ctx context.Context, percent float64) error {
	perMille := int(percent*10 + 0.5)
	for _, side := range []struct {
		ns     *netns
		ifname string
	}{{v.kas, v.kasIf}, {v.agent, v.agentIf}} {
		_, _ = runCmd(ctx, "ip", "netns", "exec", side.ns.name, "nft", "delete", "table", "inet", "qkbench")
		if perMille == 0 {
			continue
		}
		rules := fmt.Sprintf("table inet qkbench {\n\tchain in {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tiifname %q numgen random mod 1000 < %d drop\n\t}\n}\n", side.ifname, perMille)
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", side.ns.name, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %w: %s", side.ns.name, err, out)
		}
	}
	return nil
}

// close deletes the namespaces (which destroys the veth pair and the nftables tables).
func (v *veth) close() {
	for _, n := range []*netns{v.kas, v.agent} {
		if n == nil {
			continue
		}
		if n.fd != nil {
			n.fd.Close()
		}
		_, _ = runCmd(context.Background(), "ip", "netns", "del", n.name)
	}
}
