package httpstream

import (
	"bytes"
	"errors"
	"io"
	"net/http/httptest"
	"testing"
)

// sizeRecorder is a reader that records the buffer size of each Read and answers min(len(p),
// chunk) bytes, n in all.
type sizeRecorder struct {
	n, chunk int
	sizes    []int
}

func (r *sizeRecorder) Read(p []byte) (int, error) {
	r.sizes = append(r.sizes, len(p))
	if r.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.chunk, r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

// TestCopyBufferGrowsForBulk: a copy whose source fills the small buffer moves to the large
// one (bulk transfers pay the per-step cost of stream and socket writes 8 times less often);
// a copy fed in small pieces (an event stream, a watch) keeps the small buffer.
func TestCopyBufferGrowsForBulk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		chunk     int
		wantLarge bool
	}{
		{"bulk", 1 << 30, true},
		{"trickle", 1 << 10, false},
		{"just under the small buffer", smallCopyBuffer - 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(what string, sizes []int) {
				t.Helper()
				if sizes[0] != smallCopyBuffer {
					t.Fatalf("%s: first read got a %d-byte buffer, want %d", what, sizes[0], smallCopyBuffer)
				}
				large := false
				for _, s := range sizes[1:] {
					large = large || s == largeCopyBuffer
				}
				if large != tc.wantLarge {
					t.Fatalf("%s: read buffer sizes %v: large buffer used = %v, want %v", what, sizes, large, tc.wantLarge)
				}
			}
			const total = 4 << 20
			src := &sizeRecorder{n: total, chunk: tc.chunk}
			rec := httptest.NewRecorder()
			n, err := CopyBody(rec, src, false)
			if err != nil || n != total || rec.Body.Len() != total {
				t.Fatalf("CopyBody = %d, %v; recorder got %d bytes, want %d", n, err, rec.Body.Len(), total)
			}
			check("CopyBody", src.sizes)

			src = &sizeRecorder{n: total, chunk: tc.chunk}
			var out bytes.Buffer
			if n, err := copyStream(&out, src, nil); err != nil || n != total || out.Len() != total {
				t.Fatalf("copyStream = %d, %v, wrote %d, want %d", n, err, out.Len(), total)
			}
			check("copyStream", src.sizes)
		})
	}
}

// TestCopyStreamShortWrite: a writer that takes less than it was given ends the copy with an
// error, never a silently shortened stream.
func TestCopyStreamShortWrite(t *testing.T) {
	_, err := copyStream(shortWriter{}, bytes.NewReader(make([]byte, 100)), nil)
	var we *writeError
	if !errors.As(err, &we) || !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("err = %v, want io.ErrShortWrite as a *writeError", err)
	}
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

// readyBody is a body that says whether its bytes are there, and records, through its
// recorder, whether the head was flushed before its first Read.
type readyBody struct {
	ready       bool
	rec         *httptest.ResponseRecorder
	flushedHead bool // the head was flushed when the first Read came
	reads       int
}

func (b *readyBody) ReadReady() bool { return b.ready }

func (b *readyBody) Read(p []byte) (int, error) {
	if b.reads++; b.reads == 1 {
		b.flushedHead = b.rec.Flushed
		return copy(p, "data: 1\n\n"), nil
	}
	return 0, io.EOF
}

// TestCopyBodyFlushesHeadOfLateStream: a stream's head is flushed before a first Read that
// would wait (a watch's first event may come minutes after its head), and only then: a body
// that came with its head leaves with it, one write. The same for a response of known length (a
// service slow to send its first byte did answer).
func TestCopyBodyFlushesHeadOfLateStream(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ready     bool
		stream    bool
		wantFirst bool // head flushed before the first Read
	}{
		{"stream, body late", false, true, true},
		{"stream, body there", true, true, false},
		{"known length, body late", false, false, true},
		{"known length, body there", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			rec.WriteHeader(200)
			b := &readyBody{ready: tc.ready, rec: rec}
			if _, err := CopyBody(rec, b, tc.stream); err != nil {
				t.Fatal(err)
			}
			if b.flushedHead != tc.wantFirst {
				t.Errorf("head flushed before the first read = %v, want %v", b.flushedHead, tc.wantFirst)
			}
		})
	}
	// A body that cannot tell is taken as late.
	rec := httptest.NewRecorder()
	rec.WriteHeader(200)
	b := &readyBody{rec: rec}
	if _, err := CopyBody(rec, struct{ io.Reader }{b}, true); err != nil || !b.flushedHead {
		t.Errorf("a body without ReadReady: head flushed first = %v (%v), want true", b.flushedHead, err)
	}
}
