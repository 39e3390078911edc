package agentd

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

func TestTransportConfig(t *testing.T) {
	c := TransportConfig{}.withDefaults()
	if c.Mode != TransportAuto || c.FallbackAfter != 3*time.Second || c.ProbeInterval != 5*time.Minute {
		t.Errorf("defaults = %+v", c)
	}
	for _, bad := range []TransportConfig{{Mode: "udp"}, {Mode: "tcp", FallbackAfter: -1}, {Mode: "quic", TCPPort: 70000}} {
		if len(bad.withDefaults().validate()) == 0 {
			t.Errorf("%+v validated", bad)
		}
	}
}

func TestFallbackReason(t *testing.T) {
	for _, c := range []struct {
		err    error
		reason string
		ok     bool
	}{
		{fmt.Errorf("x: %w", errQUICFallback), "handshake_timeout", true},
		{context.DeadlineExceeded, "handshake_timeout", true},
		{&net.OpError{Op: "write", Err: syscall.ECONNREFUSED}, "udp_unreachable", true},
		{syscall.ENETUNREACH, "udp_unreachable", true},
		{errors.New("tls: bad certificate"), "", false},
	} {
		r, ok := fallbackReason(c.err)
		if r != c.reason || ok != c.ok {
			t.Errorf("fallbackReason(%v) = %q, %v; want %q, %v", c.err, r, ok, c.reason, c.ok)
		}
	}
}

// A handshake timeout within quicTrust of kasd answering over QUIC is withheld from the TCP
// fallback (kasd is overloaded: its restart storm); an ICMP unreachable, a timeout with no QUIC
// answer yet, or one after the window still falls back. Only packets from kasd count as an
// answer.
func TestFallbackWithheldAfterQUICAnswered(t *testing.T) {
	now := time.Now()
	timeout := &quicgo.HandshakeTimeoutError{}
	unreachable := &net.OpError{Op: "write", Err: syscall.ECONNREFUSED}
	tr := &transports{}
	if _, ok, withheld := tr.fallBack(timeout, now); !ok || withheld {
		t.Errorf("no QUIC answer yet: fallback %v, withheld %v; want a fallback", ok, withheld)
	}
	tr.sawQUIC(now.Add(-10 * time.Second))
	if reason, ok, withheld := tr.fallBack(timeout, now); ok || !withheld || reason != "handshake_timeout" {
		t.Errorf("kasd answered 10s ago: fallback %v, withheld %v (%s); want withheld", ok, withheld, reason)
	}
	if _, ok, withheld := tr.fallBack(unreachable, now); !ok || withheld {
		t.Errorf("UDP unreachable: fallback %v, withheld %v; want a fallback", ok, withheld)
	}
	if _, ok, withheld := tr.fallBack(timeout, now.Add(quicTrust)); !ok || withheld {
		t.Errorf("kasd answered quicTrust+10s ago: fallback %v, withheld %v; want a fallback", ok, withheld)
	}
	tr.sawQUIC(now.Add(-time.Hour)) // an older sign does not move it back
	if !tr.quicTrusted(now) {
		t.Error("an older answer replaced a newer one")
	}

	for _, c := range []struct {
		err  error
		want bool
	}{
		{&quicgo.StatelessResetError{}, true},
		{fmt.Errorf("dial: %w", &quicgo.TransportError{ErrorCode: quicgo.ConnectionRefused, Remote: true}), true},
		{&quicgo.ApplicationError{Remote: true}, true},
		{&quicgo.VersionNegotiationError{}, true},
		{&quicgo.TransportError{ErrorCode: quicgo.ConnectionRefused}, false}, // our own close
		{&quicgo.ApplicationError{}, false},
		{&quicgo.IdleTimeoutError{}, false},
		{timeout, false},
		{context.DeadlineExceeded, false},
	} {
		if got := quicAnswered(c.err); got != c.want {
			t.Errorf("quicAnswered(%T %v) = %v, want %v", c.err, c.err, got, c.want)
		}
	}
}

// fakeProxy answers CONNECT with status (200: then it echoes the tunnel's bytes), checking the
// Proxy-Authorization it was given.
func fakeProxy(t *testing.T, status int) (*url.URL, chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 4)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				seen <- req.Method + " " + req.Host + " " + req.Header.Get("Proxy-Authorization")
				fmt.Fprintf(c, "HTTP/1.1 %d %s\r\n\r\n", status, http.StatusText(status))
				if status == 200 {
					_, _ = io.Copy(c, br)
				}
			})
		}
	})
	u, _ := url.Parse("http://user:secret@" + ln.Addr().String())
	return u, seen
}

func TestDialConnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, seen := fakeProxy(t, 200)
	c, err := dialConnect(ctx, u, "10.1.2.3:8150")
	if err != nil {
		t.Fatal(err)
	}
	want := "CONNECT 10.1.2.3:8150 Basic " + base64.StdEncoding.EncodeToString([]byte("user:secret"))
	if got := <-seen; got != want {
		t.Errorf("proxy saw %q, want %q", got, want)
	}
	_, _ = c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("tunnel: %q %v", buf, err)
	}
	c.Close()

	for status, code := range map[int]ConnectCode{407: ConnectProxyAuth, 401: ConnectProxyAuth, 403: ConnectProxyRefused, 502: ConnectProxyRefused} {
		u, _ := fakeProxy(t, status)
		_, err := dialConnect(ctx, u, "10.1.2.3:8150")
		if f := classifyConnect(err); f.Code != code {
			t.Errorf("proxy answering %d: code %s (%v), want %s", status, f.Code, err, code)
		}
	}
	// Nothing listening where the proxy should be.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead, _ := url.Parse("http://" + ln.Addr().String())
	ln.Close()
	_, err = dialConnect(ctx, dead, "10.1.2.3:8150")
	if f := classifyConnect(err); f.Code != ConnectProxyUnreachable {
		t.Errorf("dead proxy: code %s (%v), want %s", f.Code, err, ConnectProxyUnreachable)
	}
}

// TestUDPProbeWaitsForSlowDials: a dial that is over within udpProbeAfter opens no probe socket
// and sends kasd nothing (a reconnect storm is thousands of such dials); one that lasts longer
// finds a refusing network (loopback, a port nobody listens on: ICMP port unreachable) soon
// after.
func TestUDPProbeWaitsForSlowDials(t *testing.T) {
	var dials atomic.Int32
	dial := func(raddr *net.UDPAddr) (*net.UDPConn, error) {
		dials.Add(1)
		return net.DialUDP("udp", nil, raddr)
	}
	closed, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.LocalAddr().(*net.UDPAddr)
	closed.Close() // nothing listens there now

	ctx, cancel := context.WithTimeout(context.Background(), udpProbeAfter/2)
	defer cancel()
	if err := watchUDPUnreachable(ctx, dial, addr); err != nil {
		t.Fatalf("a dial over before the first probe: %v", err)
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("a dial over before udpProbeAfter opened %d probe sockets", n)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 10*udpProbeAfter)
	defer cancel()
	began := time.Now()
	err = watchUDPUnreachable(ctx, dial, addr)
	if !errors.Is(err, errUDPUnreachable) {
		t.Fatalf("a slow dial to a refusing port: %v, want errUDPUnreachable", err)
	}
	if took := time.Since(began); took < udpProbeAfter {
		t.Fatalf("refusal reported after %v, before the first probe was due (%v)", took, udpProbeAfter)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d probe sockets, want 1", n)
	}
}
