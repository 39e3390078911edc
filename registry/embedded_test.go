package registry

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A second StartEmbedded on an address where an etcd already answers joins it.
func TestStartEmbeddedJoins(t *testing.T) {
	e1 := startEtcd(t)
	if e1.Joined() {
		t.Fatal("first start joined")
	}
	if strings.HasSuffix(e1.ClientAddr(), ":0") || strings.HasSuffix(e1.PeerAddr(), ":0") {
		t.Fatalf("port 0 not resolved: %s %s", e1.ClientAddr(), e1.PeerAddr())
	}
	e2, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), ClientAddr: e1.ClientAddr(), PeerAddr: "127.0.0.1:0", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if !e2.Joined() {
		t.Fatal("second start did not join")
	}
	mustEqual(t, "joined endpoints", strings.Join(e2.Endpoints(), ","), strings.Join(e1.Endpoints(), ","))
	if err := e2.Close(); err != nil { // must leave e1's server alone
		t.Fatal(err)
	}

	c := newTestClient(t, e2.Endpoints())
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := c.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put through the joined endpoint after the joiner closed: %v", err)
	}
	c.Close()
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// An address held by something that is not etcd is an error, not a join.
func TestStartEmbeddedAddressTakenByOther(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer func() { ln.Close(); <-done }()
	go func() { // accept and hang up: not an etcd
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, err = StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), ClientAddr: ln.Addr().String(), Log: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("got %v, want an address-in-use error", err)
	}
}

func TestStartEmbeddedNeedsDir(t *testing.T) {
	if _, err := StartEmbedded(EmbeddedConfig{}); err == nil {
		t.Fatal("no dir accepted")
	}
}

func TestNewClientConfig(t *testing.T) {
	if _, err := NewClient(ClientConfig{}); err == nil {
		t.Error("no endpoints accepted")
	}
	if _, err := NewClient(ClientConfig{Endpoints: []string{"http://127.0.0.1:1"}, CertFile: "c.pem"}); err == nil {
		t.Error("cert without key accepted")
	}
	if _, err := NewClient(ClientConfig{Endpoints: []string{"https://127.0.0.1:1"}, CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Error("missing CA file accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(ClientConfig{Endpoints: []string{"https://127.0.0.1:1"}, CAFile: bad}); err == nil {
		t.Error("CA file without certificates accepted")
	}
}

// TestEmbeddedCloseLogsNoError: closing the embedded etcd is a normal stop, yet etcd's serving
// goroutines reported their listeners' closing ("setting up serving from embedded etcd
// failed.": "http: Server closed", "use of closed network connection"), routed at error level:
// every clean shutdown of a kasd with its default embedded etcd (the quickstart) ended with four
// error lines. Errors etcd reports once Close has begun are logged at debug.
func TestEmbeddedCloseLogsNoError(t *testing.T) {
	var buf syncBuffer
	e, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0",
		Log: zerolog.New(&buf).Level(zerolog.DebugLevel)})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, e.Endpoints())
	if _, err := c.Put(ctxTimeout(t, 5*time.Second), "/k", "v"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.Contains(line, `"level":"error"`) {
			t.Errorf("error logged by a clean Close: %s", line)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of etcd's goroutines.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
