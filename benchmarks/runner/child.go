package runner

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/qkas/qkas/quic"
)

// ChildArg, as the first argument of the program that calls Run, makes it a child of the
// runner instead: main must then call ChildMain with the arguments after it. The runner starts
// its reference systems this way (Config.Self), as separate processes whose CPU it reads from
// /proc exactly like kasd's and agentd's:
//
//	raw-quic      the raw quic-go server (rawquic.go) on the UDP socket handed over as fd 3
//	reverseproxy  one httputil.ReverseProxy hop to --target on the TCP listener of fd 3
//	tcp-relay     a byte relay to --target (host:port) on the TCP listener of fd 3: one
//	              upstream connection per client connection, io.Copy both ways, no parsing
//
// The runner creates the sockets and hands them over, so a child needs no readiness probe:
// whatever arrives before it runs waits in the socket.
const ChildArg = "__qkasbench-child"

// Child roles.
const (
	childRawQUIC      = "raw-quic"
	childReverseProxy = "reverseproxy"
	childTCPRelay     = "tcp-relay"
)

// ChildMain runs one child role (args: role, then its flags) until ctx ends, then stops it and
// returns when its goroutines are gone.
func ChildMain(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("child: no role")
	}
	role := args[0]
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	certFile := fs.String("cert", "", "raw-quic: TLS certificate file")
	keyFile := fs.String("key", "", "raw-quic: TLS key file")
	target := fs.String("target", "", "reverseproxy: URL of the service; tcp-relay: its host:port")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	sock := os.NewFile(3, "socket")
	if sock == nil {
		return errors.New("child: no socket on fd 3")
	}
	defer sock.Close()
	switch role {
	case childRawQUIC:
		cert, err := quic.LoadKeyPair(*certFile, *keyFile)
		if err != nil {
			return err
		}
		pc, err := net.FilePacketConn(sock)
		if err != nil {
			return err
		}
		srv, err := listenRaw(pc, cert, quic.Config{})
		if err != nil {
			return err
		}
		<-ctx.Done()
		srv.close()
		return nil
	case childReverseProxy:
		u, err := url.Parse(*target)
		if err != nil || u.Host == "" {
			return fmt.Errorf("reverseproxy: bad --target %q", *target)
		}
		ln, err := net.FileListener(sock)
		if err != nil {
			return err
		}
		// A plain ReverseProxy: Rewrite to the service and a default Transport, except that
		// the idle pool holds enough connections for c=64 (the default keeps 2 per host, and a
		// proxy that re-dials for most requests would measure TCP handshakes, not the hop).
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 512, 256
		srv := serveHTTP(ln, &httputil.ReverseProxy{
			Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u) },
			Transport: tr,
			ErrorLog:  quietLog,
		})
		<-ctx.Done()
		srv.close()
		tr.CloseIdleConnections()
		return nil
	case childTCPRelay:
		if _, _, err := net.SplitHostPort(*target); err != nil {
			return fmt.Errorf("tcp-relay: bad --target %q: %w", *target, err)
		}
		ln, err := net.FileListener(sock)
		if err != nil {
			return err
		}
		return relayTCP(ctx, ln, *target)
	}
	return fmt.Errorf("child: unknown role %q", role)
}

// startChild re-executes the runner's program (Config.Self) in a child role in ns, handing it
// sock as fd 3. The caller closes its copy of sock.
func (e *env) startChild(role string, ns *netns, sock *os.File, args ...string) (*proc, error) {
	self := e.cfg.Self
	if len(self) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("child %s: %w", role, err)
		}
		self = []string{exe}
	}
	argv := append(append(append([]string{}, self...), ChildArg, role), args...)
	return startProcFiles(e.subdir(role), role, ns.String(), []*os.File{sock}, argv...)
}

// rawQUICChild is the raw quic-go server in a child process and the runner's connection to it.
type rawQUICChild struct {
	proc *proc
	*rawClient
}

// startRawQUICChild starts the server in ns (nil: the runner's namespace) and connects to it
// from ns.
func (e *env) startRawQUICChild(ctx context.Context, ns *netns) (_ *rawQUICChild, err error) {
	var pc *net.UDPConn
	if err := ns.do(func() (err error) {
		pc, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		return nil, err
	}
	defer pc.Close() // the child has its own copy
	f, err := pc.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &rawQUICChild{}
	if r.proc, err = e.startChild(childRawQUIC, ns, f, "--cert", e.certFile, "--key", e.keyFile); err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if r.rawClient, err = dialRaw(dctx, ns, e.caFile, pc.LocalAddr().String()); err != nil {
		r.proc.stop(time.Second)
		return nil, fmt.Errorf("raw quic-go child: %w; log:\n%s", err, r.proc.logTail())
	}
	return r, nil
}

func (r *rawQUICChild) close() {
	if r == nil {
		return
	}
	r.rawClient.close()
	r.proc.stop(3 * time.Second)
}

// startTCPRelayChild starts a TCP byte relay in ns in front of target (host:port) and returns
// its process and listen address.
func (e *env) startTCPRelayChild(ns *netns, target string) (*proc, string, error) {
	return e.startListenerChild(childTCPRelay, ns, target)
}

// startReverseProxyChild starts one httputil.ReverseProxy hop in ns in front of target
// (host:port) and returns its process and listen address.
func (e *env) startReverseProxyChild(ns *netns, target string) (*proc, string, error) {
	return e.startListenerChild(childReverseProxy, ns, "http://"+target)
}

// startListenerChild starts a child role serving a TCP listener it is handed, with --target.
func (e *env) startListenerChild(role string, ns *netns, target string) (*proc, string, error) {
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	p, err := e.startChild(role, ns, f, "--target", target)
	return p, ln.Addr().String(), err
}

// relayTCP accepts connections on ln until ctx ends and relays each one's bytes to a new
// connection to target and back, as a TCP proxy without a multiplexer does: the cheapest
// proxy process there is, no HTTP parsing, Go's io.Copy (splice(2) between TCP sockets on
// Linux). It returns when every relay has ended.
func relayTCP(ctx context.Context, ln net.Listener, target string) error {
	var wg sync.WaitGroup
	conns := make(map[net.Conn]struct{})
	var mu sync.Mutex
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if add {
			if ctx.Err() != nil {
				return false
			}
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
		return true
	}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				// Out of file descriptors or a connection gone before it was taken: wait and
				// go on, as http.Server does, rather than end the route.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			ln.Close()
			return err
		}
		backoff = 0
		wg.Add(1)
		go func() { // owned by relayTCP: it waits for wg
			defer wg.Done()
			defer c.Close()
			up, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
			if err != nil {
				return
			}
			defer up.Close()
			if !track(c, true) {
				return
			}
			defer track(c, false)
			if !track(up, true) {
				return
			}
			defer track(up, false)
			done := make(chan struct{})
			go func() { // owned by this relay: it waits for done
				defer close(done)
				_, _ = io.Copy(up, c)
				_ = up.(*net.TCPConn).CloseWrite()
			}()
			_, _ = io.Copy(c, up)
			_ = c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}
