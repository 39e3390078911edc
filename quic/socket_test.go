package quic

import (
	"bytes"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeSockopts models Linux: getsockopt reports twice the size set, the plain option is capped
// at max, the force option is refused unless privileged.
type fakeSockopts struct {
	reported   map[int]int // option -> reported (doubled) size
	max        int         // net.core.rmem_max / wmem_max
	privileged bool
	sets       []string
}

func newFakeSockopts(initial, max int, privileged bool) *fakeSockopts {
	return &fakeSockopts{
		reported:   map[int]int{receiveOpts.size: 2 * initial, sendOpts.size: 2 * initial},
		max:        max,
		privileged: privileged,
	}
}

func (f *fakeSockopts) setInt(opt, v int) error {
	f.sets = append(f.sets, strconv.Itoa(opt))
	switch opt {
	case receiveOpts.force, sendOpts.force:
		if !f.privileged || opt == 0 {
			return syscall.EPERM
		}
		size := receiveOpts.size
		if opt == sendOpts.force {
			size = sendOpts.size
		}
		f.reported[size] = 2 * v
	default:
		f.reported[opt] = 2 * min(v, f.max)
	}
	return nil
}

func (f *fakeSockopts) getInt(opt int) (int, error) { return f.reported[opt], nil }

func TestSizeBuffersFallbacks(t *testing.T) {
	const want = 7 << 20
	if receiveOpts.force == 0 {
		t.Skip("no force option on this platform")
	}
	tests := []struct {
		name       string
		so         *fakeSockopts
		wantSize   int
		wantForced bool
		wantSets   int
	}{
		{"privileged: forced past the sysctl maximum", newFakeSockopts(208<<10, 208<<10, true), want, true, 2},
		{"unprivileged: the largest the kernel allows", newFakeSockopts(208<<10, 4<<20, false), 4 << 20, false, 4},
		{"unprivileged, sysctl raised: all of it", newFakeSockopts(208<<10, 16<<20, false), want, false, 4},
		{"already large enough: untouched", newFakeSockopts(8<<20, 208<<10, false), 8 << 20, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := sizeBuffers(tt.so, want, want)
			if err != nil {
				t.Fatal(err)
			}
			if b.Receive != tt.wantSize || b.Send != tt.wantSize || b.ReceiveForced != tt.wantForced || b.SendForced != tt.wantForced {
				t.Fatalf("got %+v, want %d bytes each, forced=%v", b, tt.wantSize, tt.wantForced)
			}
			if len(tt.so.sets) != tt.wantSets {
				t.Fatalf("%d setsockopt calls %v, want %d", len(tt.so.sets), tt.so.sets, tt.wantSets)
			}
		})
	}
	// Zero or negative asks for nothing.
	so := newFakeSockopts(208<<10, 208<<10, true)
	if b, err := sizeBuffers(so, -1, 0); err != nil || b.Receive != 208<<10 || len(so.sets) != 0 {
		t.Fatalf("sizeBuffers(-1, 0) = %+v, %v after %v", b, err, so.sets)
	}
}

// TestSizeBuffersRealSocket: on a real socket the result is what the kernel reports: at least
// what was asked for when privileged (or when the sysctl allows it), else the sysctl maximum.
func TestSizeBuffersRealSocket(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const want = 7 << 20
	b, err := SizeBuffers(c, want, want)
	if err != nil {
		t.Fatal(err)
	}
	rmax, wmax := sysctlInt(t, "net/core/rmem_max"), sysctlInt(t, "net/core/wmem_max")
	floor := func(max int) int {
		if b.ReceiveForced || max >= want {
			return want
		}
		return max
	}
	if b.Receive < floor(rmax) || b.Send < floor(wmax) {
		t.Fatalf("obtained %+v, want at least %d/%d (rmem_max %d, wmem_max %d, euid %d)", b, floor(rmax), floor(wmax), rmax, wmax, os.Geteuid())
	}
	if os.Geteuid() == 0 && (b.Receive < want || b.Send < want) {
		t.Fatalf("as root obtained %+v, want %d each", b, want)
	}
	got, err := ReadSocketBuffers(c)
	if err != nil || got.Receive != b.Receive || got.Send != b.Send {
		t.Fatalf("ReadSocketBuffers = %+v, %v; want %+v", got, err, b)
	}
}

func sysctlInt(t *testing.T, name string) int {
	data, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Skipf("no %s: %v", name, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSocketDropsCounted: datagrams sent to a socket with a tiny receive buffer that nobody
// reads are dropped by the kernel, and SocketDrops sees them.
func TestSocketDropsCounted(t *testing.T) {
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := rx.SetReadBuffer(1); err != nil { // the kernel's minimum, a few KiB
		t.Fatal(err)
	}
	before, err := SocketDrops(rx)
	if err != nil {
		t.Skipf("no drop counts here: %v", err)
	}
	tx, err := net.DialUDP("udp", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	payload := bytes.Repeat([]byte{'x'}, 1200)
	for range 200 {
		_, _ = tx.Write(payload)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after, err := SocketDrops(rx)
		if err != nil {
			t.Fatal(err)
		}
		if after-before >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops %d -> %d after 200 datagrams into a full buffer", before, after)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestListenerSocketCollector(t *testing.T) {
	serverTLS, _ := testTLS(t)
	ln, err := Listen("127.0.0.1:0", serverTLS, Config{SocketReceiveBuffer: 1 << 20, SocketSendBuffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := ln.SocketBuffers()
	if err != nil {
		t.Fatal(err)
	}
	if b.Receive < 208<<10 {
		t.Fatalf("listener buffers %+v", b)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewSocketCollector("test", map[string]Socket{"agent": ln}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) != 1 || l[0].GetValue() != "agent" {
				t.Fatalf("%s labels %v", mf.GetName(), l)
			}
			got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if got["test_udp_receive_buffer_bytes"] != float64(b.Receive) || got["test_udp_send_buffer_bytes"] != float64(b.Send) {
		t.Fatalf("metrics %v, want buffers %+v", got, b)
	}
	if _, ok := got["test_udp_receive_drops_total"]; !ok {
		t.Fatalf("no drops series in %v", got)
	}
}

func TestProcNetUDPDrops(t *testing.T) {
	const text = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  512: 0100007F:1FD6 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41239 2 0000000000000000 17
  513: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0
broken line
`
	for _, tc := range []struct {
		inode uint64
		drops uint64
		found bool
	}{{41239, 17, true}, {99, 0, true}, {1, 0, false}} {
		d, ok := procNetUDPDrops([]byte(text), tc.inode)
		if d != tc.drops || ok != tc.found {
			t.Errorf("inode %d: %d, %v; want %d, %v", tc.inode, d, ok, tc.drops, tc.found)
		}
	}
}

func FuzzProcNetUDPDrops(f *testing.F) {
	f.Add([]byte("  0: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7 2 0000000000000000 3\n"), uint64(7))
	f.Add([]byte("a b c d e f g h i j k l m n\n\n"), uint64(0))
	f.Add([]byte("0 1 2 3 4 5 6 7 8 99999999999999999999999 10 11 12"), uint64(0))
	f.Fuzz(func(t *testing.T, data []byte, inode uint64) {
		d, ok := procNetUDPDrops(data, inode)
		if !ok && d != 0 {
			t.Fatalf("not found but drops %d", d)
		}
	})
}
