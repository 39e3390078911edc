package api

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"testing/iotest"
)

// fuzzSeeds returns AppendFrame of every sample message plus mutations:
// truncations, length bumps, type swaps and trailing bytes.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	for _, m := range sampleMessages() {
		f := AppendFrame(nil, m)
		seeds = append(seeds, f)
		seeds = append(seeds, f[:len(f)-1])                    // truncated payload
		seeds = append(seeds, f[:min(len(f), 3)])              // truncated header
		seeds = append(seeds, append(bytes.Clone(f), 0xff, 0)) // trailing bytes after the frame
		g := bytes.Clone(f)
		g[3]++ // length one too long
		seeds = append(seeds, g)
		for _, typ := range []FrameType{TypeHello, TypeRequest, TypeError, 6, 255} {
			h := bytes.Clone(f)
			h[0] = byte(typ)
			seeds = append(seeds, h)
		}
		// A payload with trailing (future) fields.
		seeds = append(seeds, payloadFrame(m.Type(), append(m.AppendPayload(nil), 1, 2, 3)))
	}
	return seeds
}

// checkParsed asserts the invariants of a successful parse: the message
// re-encodes to at most the bytes it came from, and that encoding parses to
// an equal message.
func checkParsed(t *testing.T, m Message, n int, in []byte) {
	t.Helper()
	if m == nil || n < FrameHeaderSize || n > len(in) || n-FrameHeaderSize > m.Type().MaxSize() {
		t.Fatalf("bad parse: %#v, n=%d, len=%d", m, n, len(in))
	}
	if FrameType(in[0]) != m.Type() {
		t.Fatalf("type %s parsed as %s", FrameType(in[0]), m.Type())
	}
	re, err := EncodeFrame(nil, m)
	if err != nil {
		t.Fatalf("re-encoding %#v: %v", m, err)
	}
	if len(re) > n {
		t.Fatalf("re-encoding is %d bytes, longer than the %d parsed", len(re), n)
	}
	m2, n2, err := ParseFrame(re)
	if err != nil || n2 != len(re) {
		t.Fatalf("re-parse: %v (n=%d of %d)", err, n2, len(re))
	}
	if !reflect.DeepEqual(normalize(m), normalize(m2)) {
		t.Fatalf("re-parse differs:\n%#v\n%#v", m, m2)
	}
}

func checkParseError(t *testing.T, err error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || (e.Code != CodeProtocol && e.Code != CodeUnsupportedVersion) || e.Message == "" {
		t.Fatalf("parse error is not a protocol *Error: %#v", err)
	}
	for _, s := range []error{ErrFrameTooLarge, ErrUnknownFrameType, ErrTruncated, ErrMalformed, ErrUnsupportedVersion, ErrUnexpectedFrame} {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("parse error wraps no sentinel: %v", err)
}

func FuzzParseFrame(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		m, n, err := ParseFrame(in)
		if err != nil {
			if m != nil || n != 0 {
				t.Fatalf("error with message/count: %v, %d", m, n)
			}
			checkParseError(t, err)
			return
		}
		checkParsed(t, m, n, in)
	})
}

// FuzzReadFrame checks that ReadFrame over a stream agrees with ParseFrame
// on the same bytes, consumes exactly the frame, and never over-reads,
// whatever the read sizes.
func FuzzReadFrame(f *testing.F) {
	for i, s := range fuzzSeeds() {
		f.Add(s, uint8(i%3))
	}
	f.Fuzz(func(t *testing.T, in []byte, mode uint8) {
		br := bytes.NewReader(in)
		var r io.Reader = br
		switch mode % 3 {
		case 1:
			r = iotest.OneByteReader(br)
		case 2:
			r = iotest.HalfReader(br)
		}
		m, err := ReadFrame(r)
		pm, pn, perr := ParseFrame(in)
		consumed := len(in) - br.Len()
		switch {
		case len(in) == 0:
			if err != io.EOF {
				t.Fatalf("empty input: %v", err)
			}
		case err != nil:
			checkParseError(t, err)
			if perr == nil {
				t.Fatalf("ReadFrame failed (%v) where ParseFrame succeeded", err)
			}
			if !errors.Is(perr, ErrTruncated) && !errors.Is(err, ErrTruncated) {
				// Same failure for a complete frame: same sentinel and message.
				if err.Error() != perr.Error() {
					t.Fatalf("ReadFrame %v, ParseFrame %v", err, perr)
				}
			}
			limit := FrameType(in[0]).MaxSize()
			if errors.Is(err, ErrUnknownFrameType) {
				limit = MaxFrameSize // an unknown frame is consumed so that the stream stays in step
			}
			if consumed > FrameHeaderSize+limit {
				t.Fatalf("over-read on error: %d bytes", consumed)
			}
		default:
			if perr != nil {
				t.Fatalf("ParseFrame failed (%v) where ReadFrame succeeded", perr)
			}
			if consumed != pn {
				t.Fatalf("ReadFrame consumed %d, frame is %d", consumed, pn)
			}
			if !reflect.DeepEqual(normalize(m), normalize(pm)) {
				t.Fatalf("ReadFrame %#v, ParseFrame %#v", m, pm)
			}
			checkParsed(t, m, pn, in)
		}
	})
}
