package suite

import (
	"bytes"
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

// Names of everything this suite creates start with prefix, so that cleanup can find leftovers.
const (
	prefix    = "qkch-"
	hubNS     = prefix + "hub"
	bridge    = prefix + "br"
	nodeIf    = prefix + "eth" // the veth end inside every node namespace
	nftTable  = "qkch"         // table inet qkch in a node namespace holds its faults
	lockPath  = "/run/qkch-chaos.lock"
	netPrefix = 16 // 10.77.0.0/16
)

// netns is one node's network namespace. Sockets made by Dial and Listen belong to it for
// their whole life, so this process serves and loads namespaced endpoints without re-executing
// itself.
type netns struct {
	name string
	ip   string
	fd   *os.File // /run/netns/<name>
}

// do runs f on an OS thread switched into n, then switches the thread back. If the thread cannot
// be switched back it stays locked, and the Go runtime retires it with the goroutine.
func (n *netns) do(f func() error) error {
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
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// dialError marks a failure to connect: the request never reached the server, so the load
// balancer may send it elsewhere.
type dialError struct{ err error }

func (e *dialError) Error() string { return "dial: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// Dial connects from inside n.
func (n *netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		d := net.Dialer{Timeout: dialTimeout}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, &dialError{err}
	}
	return c, nil
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

// network is the hub with its bridge and the node namespaces attached to it.
type network struct {
	nodes map[string]*netns
	lock  *os.File
}

// checkTools reports why namespaces cannot be made here, or nil.
func checkTools() error {
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

// newNetwork takes the lock, removes what an earlier run left behind, and creates the hub and
// its bridge. Nodes are added with add.
func newNetwork(ctx context.Context) (*network, error) {
	if err := checkTools(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another chaos run holds %s: %w", lockPath, err)
	}
	nw := &network{nodes: map[string]*netns{}, lock: f}
	removeLeftovers(ctx)
	for _, argv := range [][]string{
		{"ip", "netns", "add", hubNS},
		{"ip", "-n", hubNS, "link", "set", "lo", "up"},
		{"ip", "-n", hubNS, "link", "add", bridge, "type", "bridge"},
		{"ip", "-n", hubNS, "link", "set", bridge, "up"},
	} {
		if _, err := runCmd(ctx, argv...); err != nil {
			nw.close()
			return nil, err
		}
	}
	return nw, nil
}

// add creates namespace prefix+name with address ip on a veth into the bridge. The veth is
// created with both ends already in their namespaces: nothing ever appears in the host's.
func (nw *network) add(ctx context.Context, name, ip string) (*netns, error) {
	ns := prefix + name
	hubIf := prefix + "h" + name
	if len(hubIf) > 15 {
		return nil, fmt.Errorf("interface name %q too long", hubIf)
	}
	for _, argv := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", hubIf, "netns", hubNS, "type", "veth", "peer", "name", nodeIf, "netns", ns},
		{"ip", "-n", hubNS, "link", "set", hubIf, "master", bridge, "up"},
		{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", ip, netPrefix), "dev", nodeIf},
		{"ip", "-n", ns, "link", "set", nodeIf, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	} {
		if _, err := runCmd(ctx, argv...); err != nil {
			return nil, err
		}
	}
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, err
	}
	n := &netns{name: ns, ip: ip, fd: f}
	nw.nodes[name] = n
	return n, nil
}

// setRules replaces the fault table of namespace ns with chain input holding rules (nft syntax,
// one rule a line); no rules removes the table.
func setRules(ctx context.Context, ns string, rules ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", nftTable, nftTable)
	if len(rules) > 0 {
		fmt.Fprintf(&b, "table inet %s {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n", nftTable)
		for _, r := range rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n}\n")
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", ns, err, out)
	}
	return nil
}

// setBridgeRules replaces the fault table of the hub namespace, whose bridge carries every
// packet between nodes, with chain forward holding rules; no rules removes it. One nft
// transaction: a cut there is atomic, both directions at once (rules in two node namespaces
// go in one after the other, and the moment between is a one-way partition).
func setBridgeRules(ctx context.Context, rules ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "table bridge %s\ndelete table bridge %s\n", nftTable, nftTable)
	if len(rules) > 0 {
		fmt.Fprintf(&b, "table bridge %s {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n", nftTable)
		for _, r := range rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n}\n")
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", hubNS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", hubNS, err, out)
	}
	return nil
}

// close deletes every namespace (which destroys the veths, the bridge and the nftables tables)
// and releases the lock.
func (nw *network) close() {
	for _, n := range nw.nodes {
		n.fd.Close()
	}
	removeLeftovers(context.Background())
	if nw.lock != nil {
		nw.lock.Close()
	}
}

// removeLeftovers deletes every namespace and host link whose name starts with prefix.
func removeLeftovers(ctx context.Context) {
	if out, err := runCmd(ctx, "ip", "netns", "list"); err == nil {
		for line := range strings.Lines(out) {
			name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			if strings.HasPrefix(name, prefix) {
				_, _ = runCmd(ctx, "ip", "netns", "del", name)
			}
		}
	}
	if out, err := runCmd(ctx, "ip", "-o", "link", "show"); err == nil {
		for line := range strings.Lines(out) {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if strings.HasPrefix(name, prefix) {
				_, _ = runCmd(ctx, "ip", "link", "del", name)
			}
		}
	}
}

// runCmd runs a short command and returns its trimmed stdout; stderr goes into the error.
func runCmd(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}
