package httpstream

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"testing"
	"testing/iotest"

	"github.com/qkas/qkas/api"
)

// framedBody encodes payload as a framed body with trailers, the way the writers do.
func framedBody(payload []byte, trailers http.Header) []byte {
	var out bytes.Buffer
	fw := &framedWriter{w: &out}
	fw.Write(payload)
	if err := fw.writeTrailers(trailers); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// completeFramed is an independent reading of a framed body: data frames (each at most
// MaxDataSize), then one valid trailers frame that ends exactly at the end of b.
func completeFramed(b []byte) (payload []byte, ok bool) {
	payload = []byte{}
	for off := 0; ; {
		if len(b)-off < api.FrameHeaderSize {
			return nil, false
		}
		t, n := api.FrameType(b[off]), int(b[off+1])<<16|int(b[off+2])<<8|int(b[off+3])
		end := off + api.FrameHeaderSize + n
		if end > len(b) {
			return nil, false
		}
		switch t {
		case api.TypeData:
			if n > api.MaxDataSize {
				return nil, false
			}
			payload = append(payload, b[off+api.FrameHeaderSize:end]...)
		case api.TypeTrailers:
			if _, _, err := api.ParseFrame(b[off:end]); err != nil {
				return nil, false
			}
			return payload, end == len(b)
		default:
			return nil, false
		}
		off = end
	}
}

// errReset stands for a stream reset after the given bytes.
var errReset = errors.New("stream reset")

// FuzzBodyReader: any bytes, read as a raw body of any declared length or as a framed body,
// never panic, and read to a clean EOF exactly when the body is complete: all of the declared
// length and nothing more, or data frames ended by one valid trailers frame and FIN (adding up
// to the declared length, if one was). A body cut
// by FIN or by a reset is an error, never a clean EOF.
func FuzzBodyReader(f *testing.F) {
	f.Add([]byte("hello"), int64(5), false, false, false)
	f.Add([]byte("hello"), int64(6), false, false, false)
	f.Add([]byte("hello"), int64(4), false, true, false)
	f.Add([]byte("hello"), int64(-1), false, false, true)
	f.Add([]byte{}, int64(0), false, false, false)
	f.Add(framedBody([]byte("hello"), nil), int64(-1), true, false, false)
	f.Add(framedBody(bytes.Repeat([]byte("x"), 70<<10), http.Header{"X-Sum": {"abc"}}), int64(-1), true, true, false)
	full := framedBody([]byte("payload"), http.Header{"Grpc-Status": {"0"}})
	f.Add(full[:len(full)-1], int64(-1), true, false, false)
	f.Add(full, int64(-1), true, false, true)
	f.Add(append(full, 0), int64(-1), true, false, false)
	f.Add(api.AppendFrame(nil, &api.Response{Status: 200}), int64(-1), true, false, false)
	f.Add(full, int64(len("payload")), true, false, false) // framed, its length declared
	f.Add(full, int64(len("payload")+1), true, false, false)
	f.Fuzz(func(t *testing.T, data []byte, cl int64, framed, oneByte, reset bool) {
		if cl < -1 {
			cl = -1 // the parser refuses anything below -1
		}
		var src io.Reader = bytes.NewReader(data)
		if reset {
			src = io.MultiReader(src, iotest.ErrReader(errReset))
		}
		if oneByte {
			src = iotest.OneByteReader(src)
		}
		trailer := http.Header{}
		br := newBodyReader(src, cl, framed, trailer)
		var got []byte
		buf := make([]byte, 7)
		var err error
		for range len(data) + 64 { // a reader that makes no progress must still end
			var n int
			n, err = br.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		if err == nil {
			t.Fatalf("no end after %d reads of %d bytes", len(data)+64, len(data))
		}
		if n, again := br.Read(buf); n != 0 || again != err {
			t.Fatalf("error not sticky: %d, %v after %v", n, again, err)
		}
		var want []byte
		var complete bool
		switch {
		case reset:
			complete = false
		case framed:
			want, complete = completeFramed(data)
			if cl >= 0 && int64(len(want)) != cl {
				complete = false // a framed body with a declared length must add up to it
			}
		case cl < 0:
			want, complete = data, true
		default:
			want, complete = data, int64(len(data)) == cl
		}
		if clean := err == io.EOF; clean != complete {
			t.Fatalf("framed %v, cl %d, %d bytes (reset %v): read ended with %v, complete %v", framed, cl, len(data), reset, err, complete)
		}
		if complete && !bytes.Equal(got, want) {
			t.Fatalf("read %q, want %q", got, want)
		}
		if !framed && cl >= 0 && int64(len(got)) > cl {
			t.Fatalf("read %d bytes past the declared %d", len(got), cl)
		}
	})
}
