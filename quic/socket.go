package quic

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultSocketBuffer is the UDP receive and send buffer size a Listener or Dialer asks the
// kernel for: quic-go wants about 7 MiB so that a burst of datagrams (tens of thousands of
// agents reconnecting, keep-alives of a large fleet arriving while the process is busy) waits
// in the socket instead of being dropped by the kernel. Linux's default is about 208 KiB
// (net.core.rmem_default) and an unprivileged socket gets at most net.core.rmem_max
// (docs/scale.md says which sysctls to raise).
const DefaultSocketBuffer = 7 << 20

// SocketBuffers is what the kernel granted a UDP socket: the usable buffer sizes (Linux
// reports twice the usable size through getsockopt, for its bookkeeping; these are halved) and
// whether they were obtained with SO_RCVBUFFORCE/SO_SNDBUFFORCE (which needs CAP_NET_ADMIN and
// ignores net.core.rmem_max/wmem_max).
type SocketBuffers struct {
	Receive, Send             int
	ReceiveForced, SendForced bool
}

// sockopts reads and sets SOL_SOCKET integer options of one socket; injectable for tests.
type sockopts interface {
	setInt(opt int, v int) error
	getInt(opt int) (int, error)
}

// bufferOpts names the options of one direction (receive or send).
type bufferOpts struct{ size, force int }

// sizeBuffer makes the buffer at least want bytes if the kernel allows: first with the force
// option (permitted to root / CAP_NET_ADMIN, beyond the sysctl maximum), else with the plain
// option, which the kernel silently caps at net.core.{r,w}mem_max: the largest it allows. A
// buffer already large enough is left alone; want <= 0 leaves it as it is. It returns the
// usable size obtained and whether the force option did it.
func sizeBuffer(so sockopts, o bufferOpts, want int) (got int, forced bool, err error) {
	cur, err := so.getInt(o.size)
	if err != nil {
		return 0, false, err
	}
	if want <= 0 || usable(cur) >= want {
		return usable(cur), false, nil
	}
	if o.force != 0 && so.setInt(o.force, want) == nil {
		if cur, err = so.getInt(o.size); err == nil && usable(cur) >= want {
			return usable(cur), true, nil
		}
	}
	// EPERM for the force option (not root), or no such option: the largest the kernel allows.
	setErr := so.setInt(o.size, want)
	if cur, err = so.getInt(o.size); err != nil {
		return 0, false, err
	}
	return usable(cur), false, setErr
}

// SizeBuffers asks for UDP receive and send buffers of receive and send bytes on c (0 or less
// leaves that direction as it is) and reports what the kernel granted. It never fails because
// the kernel granted less: compare the result with what was asked. An error means the socket's
// options could not be read.
func SizeBuffers(c *net.UDPConn, receive, send int) (SocketBuffers, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return SocketBuffers{}, fmt.Errorf("quic: socket buffers: %w", err)
	}
	return sizeBuffers(rawSockopts{rc}, receive, send)
}

func sizeBuffers(so sockopts, receive, send int) (SocketBuffers, error) {
	var b SocketBuffers
	var err1, err2 error
	b.Receive, b.ReceiveForced, err1 = sizeBuffer(so, receiveOpts, receive)
	b.Send, b.SendForced, err2 = sizeBuffer(so, sendOpts, send)
	// A refused plain setsockopt is not an error worth reporting: the sizes say what we got.
	if err := errors.Join(ignoreSetErr(err1), ignoreSetErr(err2)); err != nil {
		return b, fmt.Errorf("quic: socket buffers: %w", err)
	}
	return b, nil
}

func ignoreSetErr(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOPROTOOPT) {
		return nil
	}
	return err
}

// ReadSocketBuffers reports c's current buffer sizes, without changing them.
func ReadSocketBuffers(c *net.UDPConn) (SocketBuffers, error) {
	return SizeBuffers(c, 0, 0)
}

// rawSockopts implements sockopts on a real socket.
type rawSockopts struct{ rc syscall.RawConn }

func (r rawSockopts) setInt(opt, v int) error {
	var serr error
	if err := r.rc.Control(func(fd uintptr) { serr = setsockoptInt(fd, opt, v) }); err != nil {
		return err
	}
	return serr
}

func (r rawSockopts) getInt(opt int) (int, error) {
	var v int
	var serr error
	if err := r.rc.Control(func(fd uintptr) { v, serr = getsockoptInt(fd, opt) }); err != nil {
		return 0, err
	}
	return v, serr
}

// udpSocket returns the *net.UDPConn under pc (a Listener's or Dialer's socket), or nil.
func udpSocket(pc net.PacketConn) *net.UDPConn {
	switch c := pc.(type) {
	case *net.UDPConn:
		return c
	case *lossyUDPConn:
		return c.UDPConn
	}
	return nil
}

// sizeSocket applies cfg's buffer sizes (defaults applied) to pc when it is a UDP socket.
// Errors are ignored: what was obtained is visible through SocketBuffers and the metrics.
func sizeSocket(pc net.PacketConn, cfg Config) {
	if c := udpSocket(pc); c != nil {
		cfg = cfg.WithDefaults()
		_, _ = SizeBuffers(c, cfg.SocketReceiveBuffer, cfg.SocketSendBuffer)
	}
}

// SocketBuffers reports the buffer sizes of the Listener's UDP socket.
func (l *Listener) SocketBuffers() (SocketBuffers, error) { return socketBuffersOf(l.pc) }

// SocketBuffers reports the buffer sizes of the Dialer's shared UDP socket.
func (d *Dialer) SocketBuffers() (SocketBuffers, error) {
	if d.pc == nil { // SocketPerConnection: each is sized alike
		return d.buffers, nil
	}
	return socketBuffersOf(d.pc)
}

// ReceiveDrops reports how many datagrams the kernel dropped for the Listener's socket since
// it was opened (a full receive buffer, mostly): see SocketDrops.
func (l *Listener) ReceiveDrops() (uint64, error) { return socketDropsOf(l.pc) }

// ReceiveDrops reports how many datagrams the kernel dropped for the Dialer's socket.
func (d *Dialer) ReceiveDrops() (uint64, error) {
	if d.pc != nil {
		return socketDropsOf(d.pc)
	}
	// SocketPerConnection: the sum over the open sockets and those closed since.
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.closedDrops
	for s := range d.own {
		drops, err := socketDropsOf(s.pc)
		if err != nil {
			return 0, err
		}
		n += drops
	}
	return n, nil
}

// GRO reports whether the Listener's socket receives coalesced datagrams (Config.NoUDPGRO).
func (l *Listener) GRO() bool { return groOf(l.tr.Conn) }

// GRO reports whether the Dialer's shared socket receives coalesced datagrams.
func (d *Dialer) GRO() bool {
	if d.tr == nil {
		return d.gro
	}
	return groOf(d.tr.Conn)
}

func groOf(pc net.PacketConn) bool {
	c, ok := pc.(*lossyUDPConn)
	return ok && c.UDP.GRO()
}

var errNotUDP = errors.New("quic: not a UDP socket")

func socketBuffersOf(pc net.PacketConn) (SocketBuffers, error) {
	c := udpSocket(pc)
	if c == nil {
		return SocketBuffers{}, errNotUDP
	}
	return ReadSocketBuffers(c)
}

func socketDropsOf(pc net.PacketConn) (uint64, error) {
	c := udpSocket(pc)
	if c == nil {
		return 0, errNotUDP
	}
	return SocketDrops(c)
}

// Socket is a UDP socket to report on: a *Listener or a *Dialer.
type Socket interface {
	SocketBuffers() (SocketBuffers, error)
	ReceiveDrops() (uint64, error)
	GRO() bool
}

// SocketCollector exports the buffer sizes and kernel drop counts of named sockets, read when
// scraped (getsockopt calls; a read of /proc/net/udp{,6} per socket on kernels without
// SO_MEMINFO's drop count):
//
//	<namespace>_udp_receive_buffer_bytes{socket}  usable receive buffer the kernel granted
//	<namespace>_udp_send_buffer_bytes{socket}     usable send buffer the kernel granted
//	<namespace>_udp_receive_drops_total{socket}   datagrams the kernel dropped for the socket
//	<namespace>_udp_gro{socket}                   1 if the socket receives coalesced datagrams
//
// A socket whose figures cannot be read is left out of that scrape.
type SocketCollector struct {
	sockets            map[string]Socket
	recvDesc, sendDesc *prometheus.Desc
	dropsDesc, groDesc *prometheus.Desc
}

// NewSocketCollector returns a collector for sockets, keyed by the socket label's value.
func NewSocketCollector(namespace string, sockets map[string]Socket) *SocketCollector {
	return &SocketCollector{
		sockets: sockets,
		recvDesc: prometheus.NewDesc(namespace+"_udp_receive_buffer_bytes",
			"Usable UDP receive buffer the kernel granted the socket (see docs/scale.md for the sysctls).", []string{"socket"}, nil),
		sendDesc: prometheus.NewDesc(namespace+"_udp_send_buffer_bytes",
			"Usable UDP send buffer the kernel granted the socket.", []string{"socket"}, nil),
		dropsDesc: prometheus.NewDesc(namespace+"_udp_receive_drops_total",
			"Datagrams the kernel dropped for the socket, mostly because its receive buffer was full (sk_drops: SO_MEMINFO, or /proc/net/udp).", []string{"socket"}, nil),
		groDesc: prometheus.NewDesc(namespace+"_udp_gro",
			"1 if the socket receives coalesced datagrams (UDP_GRO: a run of datagrams from one peer in one read), 0 if off or refused by the kernel.", []string{"socket"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *SocketCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.recvDesc
	ch <- c.sendDesc
	ch <- c.dropsDesc
	ch <- c.groDesc
}

// Collect implements prometheus.Collector.
func (c *SocketCollector) Collect(ch chan<- prometheus.Metric) {
	for name, s := range c.sockets {
		if b, err := s.SocketBuffers(); err == nil {
			ch <- prometheus.MustNewConstMetric(c.recvDesc, prometheus.GaugeValue, float64(b.Receive), name)
			ch <- prometheus.MustNewConstMetric(c.sendDesc, prometheus.GaugeValue, float64(b.Send), name)
		}
		if n, err := s.ReceiveDrops(); err == nil {
			ch <- prometheus.MustNewConstMetric(c.dropsDesc, prometheus.CounterValue, float64(n), name)
		}
		gro := 0.0
		if s.GRO() {
			gro = 1
		}
		ch <- prometheus.MustNewConstMetric(c.groDesc, prometheus.GaugeValue, gro, name)
	}
}

// procNetUDPDrops finds the socket with inode in the text of /proc/net/udp or /proc/net/udp6
// and returns its drops column (the last one). Lines that do not parse are skipped.
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
//	 0: 00000000:1FD6 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41239 2 0000000000000000 17
func procNetUDPDrops(data []byte, inode uint64) (drops uint64, found bool) {
	for len(data) > 0 {
		var line []byte
		if i := indexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		var fields [13][]byte
		n := 0
		for f := range fieldsSeq(line) {
			if n == len(fields) {
				n++
				break
			}
			fields[n] = f
			n++
		}
		if n != len(fields) {
			continue
		}
		ino, ok := parseUint(fields[9])
		if !ok || ino != inode {
			continue
		}
		if d, ok := parseUint(fields[12]); ok {
			return d, true
		}
	}
	return 0, false
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// fieldsSeq yields the space-separated fields of line without allocating.
func fieldsSeq(line []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		i := 0
		for i < len(line) {
			for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
				i++
			}
			j := i
			for j < len(line) && line[j] != ' ' && line[j] != '\t' {
				j++
			}
			if j > i && !yield(line[i:j]) {
				return
			}
			i = j
		}
	}
}

// parseUint parses a decimal uint64 (no sign, at most 20 digits, no overflow).
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}
