//go:build linux

package quic

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// groSupported reports whether this kernel accepts UDP_GRO on a socket.
func groSupported(t *testing.T) bool {
	t.Helper()
	if runtime.GOOS != "linux" {
		return false
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) }); err != nil {
		t.Fatal(err)
	}
	return serr == nil
}

// UDP_GRO is on by default on both ends, off with NoUDPGRO, and exported as <ns>_udp_gro.
func TestUDPGROConfig(t *testing.T) {
	want := groSupported(t)
	serverTLS, clientTLS := testTLS(t)
	on := listen(t, serverTLS, Config{})
	off := listen(t, serverTLS, Config{NoUDPGRO: true})
	d := newDialer(t, clientTLS, Config{})
	dOff := newDialer(t, clientTLS, Config{NoUDPGRO: true})
	if on.GRO() != want || d.GRO() != want || off.GRO() || dOff.GRO() {
		t.Fatalf("GRO: listener %v, dialer %v (kernel supports it: %v); with NoUDPGRO %v, %v",
			on.GRO(), d.GRO(), want, off.GRO(), dOff.GRO())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewSocketCollector("test", map[string]Socket{"on": on, "off": off}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "test_udp_gro" {
			for _, m := range mf.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	wantOn := 0.0
	if want {
		wantOn = 1
	}
	if len(got) != 2 || got["on"] != wantOn || got["off"] != 0 {
		t.Fatalf("test_udp_gro %v, want on=%v off=0", got, wantOn)
	}
}

// Bulk transfers both ways between GRO sockets on loopback (where a sender's GSO batches
// arrive coalesced) arrive intact, on several streams at once.
func TestUDPGROBulkIntact(t *testing.T) {
	if !groSupported(t) {
		t.Skip("no UDP_GRO here")
	}
	serverTLS, clientTLS := testTLS(t)
	ln := listen(t, serverTLS, Config{})
	serve(t, ln, echo)
	conn := dial(t, newDialer(t, clientTLS, Config{}), ln.Addr().String())

	const streams, size = 4, 8 << 20
	errs := make(chan error, streams)
	for i := range streams {
		go func() {
			errs <- func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				s, err := conn.OpenStreamSync(ctx)
				if err != nil {
					return err
				}
				sc := NewStreamConn(conn, s)
				rng := rand.New(rand.NewPCG(uint64(i), 1))
				sent := sha256.New()
				wrote := make(chan struct{})
				go func() {
					defer close(wrote)
					buf := make([]byte, 100_000+i*7)
					for left := size; left > 0; {
						n := min(left, len(buf))
						for j := range buf[:n] {
							buf[j] = byte(rng.Uint32())
						}
						sent.Write(buf[:n])
						if _, err := sc.Write(buf[:n]); err != nil {
							return
						}
						left -= n
					}
					sc.CloseWrite()
				}()
				got := sha256.New()
				n, err := io.Copy(got, sc)
				if err != nil {
					sc.Close()
					<-wrote
					return err
				}
				<-wrote
				if n != size || string(got.Sum(nil)) != string(sent.Sum(nil)) {
					t.Errorf("stream %d: %d bytes back of %d, digest match %v", i, n, size, string(got.Sum(nil)) == string(sent.Sum(nil)))
				}
				return nil
			}()
		}()
	}
	for range streams {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
