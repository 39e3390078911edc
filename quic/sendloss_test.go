package quic

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// inNetns runs f on a thread switched into the network namespace at path; sockets made in f
// belong to it for their whole life.
func inNetns(t *testing.T, path string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err) // the thread stays locked and is retired with the goroutine
	}
	runtime.UnlockOSThread()
}

// TestTransientSendErrorsAreLoss: a local firewall that drops a fifth of the client's datagrams
// makes sendmsg fail with EPERM. quic-go alone closes the connection at the first one; with the
// lossy socket they are counted and recovered from as loss, and every round trip completes.
func TestTransientSendErrorsAreLoss(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	name := fmt.Sprintf("qkas-sendloss-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "set", "lo", "up")

	serverTLS, clientTLS := testTLS(t)
	var ln *Listener
	var d *Dialer
	inNetns(t, "/run/netns/"+name, func() {
		ln = listen(t, serverTLS, Config{})
		d = newDialer(t, clientTLS, Config{})
	})
	serve(t, ln, echo)
	conn := dial(t, d, ln.Addr().String())
	port := ln.Addr().String()[strings.LastIndex(ln.Addr().String(), ":")+1:]
	run("ip", "netns", "exec", name, "nft", "add table inet qkas; add chain inet qkas out { type filter hook output priority 0; }; "+
		"add rule inet qkas out udp dport "+port+" numgen random mod 100 < 20 drop")

	before := TransientSendErrors()
	msg := bytes.Repeat([]byte("x"), 3000)
	for range 100 {
		roundTrip(t, conn, msg)
	}
	if TransientSendErrors() == before {
		t.Error("no transient send error was counted: the firewall rule did not drop anything")
	}
}
