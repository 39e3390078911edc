package quic

import (
	"context"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

func ownSockets(d *Dialer) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.own)
}

// Close during a dial in progress (SocketPerConnection): the dial ends at once, no socket stays.
func TestDialerCloseDuringDial(t *testing.T) {
	_, clientTLS := testTLS(t)
	d, err := NewDialer(clientTLS, Config{SocketPerConnection: true, HandshakeTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dead, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer dead.Close()
	done := make(chan error, 1)
	go func() {
		_, err := d.DialUDP(context.Background(), dead.LocalAddr().(*net.UDPAddr), "localhost")
		done <- err
	}()
	for ownSockets(d) != 1 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	d.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("dial succeeded")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("dial still running 3 s after Close")
	}
	if n := ownSockets(d); n != 0 {
		t.Fatalf("%d sockets", n)
	}
	// ctx canceled mid-dial
	d2, _ := NewDialer(clientTLS, Config{SocketPerConnection: true})
	defer d2.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := d2.DialUDP(ctx, dead.LocalAddr().(*net.UDPAddr), "localhost"); err == nil {
		t.Fatal("dial succeeded")
	}
	if n := ownSockets(d2); n != 0 {
		t.Fatalf("%d sockets after canceled dial", n)
	}
}

// Close returns when the goroutines of the Dialer's connections are gone, also for a
// connection that ended just before (its release runs on context.AfterFunc).
func TestDialerCloseWaitsForReleasedTransport(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, echo)
	count := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*Transport).listen")
	}
	once := func() {
		d, err := NewDialer(clientTLS, Config{SocketPerConnection: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := d.Dial(ctx, ln.Addr().String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c.CloseWithError(ConnCodeNoError, "")
		runtime.Gosched()
		d.Close()
	}
	// The listener's transport goroutine may not have run yet on a loaded machine (its stack
	// then shows its closure, not (*Transport).listen): a dial it answered puts it there.
	once()
	base := count()
	for i := range 200 {
		once()
		if n := count(); n != base {
			t.Fatalf("iteration %d: %d transport listen goroutines run after Dialer.Close returned, want %d", i, n, base)
		}
	}
}
