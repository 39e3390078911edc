package runner

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/quic"
)

// The raw quic-go server must complete every stream (read the client's late FIN) and release
// its credit, or the client runs out of stream credit after MaxIncomingStreams requests and
// blocks for good.
func TestRawQUICReturnsStreamCredit(t *testing.T) {
	dir := t.TempDir()
	cert, caFile, err := quic.DevCertificate(filepath.Join(dir, "tls"), nil)
	if err != nil {
		t.Fatal(err)
	}
	const streams = 8 // credit released in batches of 2
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := listenRaw(pc, cert, quic.Config{MaxIncomingStreams: streams})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dialRaw(ctx, nil, caFile, srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for _, conc := range []int{1, streams} {
		res, err := load.Run(ctx, load.Options{Concurrency: conc, Requests: 25 * streams}, c.get(1024))
		if err != nil {
			t.Fatalf("c=%d: %v (stream credit not returned?)", conc, err)
		}
		if res.Failed() > 0 {
			t.Fatalf("c=%d: %d failed: %v", conc, res.Failed(), res.Errors())
		}
	}
	if err := c.transfer(ctx, true, 3<<20); err != nil {
		t.Fatalf("upload: %v", err)
	}
}
