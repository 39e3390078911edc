package api

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

// fuzzSeeds returns AppendFrame of every sample message plus mutations:
// truncations, length bumps, type swaps and trailing bytes, the invalid heads,
// and frames as they follow each other on a request stream.
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
		for _, typ := range []FrameType{TypeHello, TypeRequest, TypeResponse, TypeTrailers, TypeData, TypeError, 7, 14, 255} {
			h := bytes.Clone(f)
			h[0] = byte(typ)
			seeds = append(seeds, h)
		}
		// A payload with trailing (future) fields.
		seeds = append(seeds, payloadFrame(m.Type(), append(m.AppendPayload(nil), 1, 2, 3)))
	}
	for _, h := range invalidHeads() {
		seeds = append(seeds, AppendFrame(nil, h.m))
	}
	var stream []byte
	for _, m := range []Message{getPods(), &Accepted{}, &Response{Status: 100}, &Data{Payload: []byte("x")}, &Trailers{}} {
		stream = AppendFrame(stream, m)
	}
	seeds = append(seeds, stream, append(header(77, MaxFrameSize+1), stream...))
	return seeds
}

// checkParsed asserts the invariants of a successful parse: the message
// re-encodes to at most the bytes it came from (plus what an absent optional
// field takes when written back), and that encoding parses to an equal
// message.
func checkParsed(t *testing.T, m Message, n int, in []byte) {
	t.Helper()
	if m == nil || n < FrameHeaderSize || n > len(in) || n-FrameHeaderSize > m.Type().MaxSize() {
		t.Fatalf("bad parse: %#v, n=%d, len=%d", m, n, len(in))
	}
	if FrameType(in[0]) != m.Type() {
		t.Fatalf("type %s parsed as %s", FrameType(in[0]), m.Type())
	}
	if r, ok := m.(*Request); ok {
		if got, want := r.PayloadLen(), len(r.AppendPayload(nil)); got != want {
			t.Fatalf("PayloadLen = %d, AppendPayload wrote %d bytes: %#v", got, want, r)
		}
	}
	// An optional field that was absent is written back: one byte (an empty string) more.
	limit := n
	optionalAbsent := false
	switch v := m.(type) {
	case *PeerHello:
		optionalAbsent = v.FleetID == "" // absent in hellos from before fleet ids
	case *GoAway:
		optionalAbsent = v.Prefer == "" // absent in go_aways from before rebalancing
	case *Hello:
		optionalAbsent = v.Features == 0 // absent in hellos from before feature bits
	case *Welcome:
		optionalAbsent = v.Features == 0 // absent in welcomes from before feature bits
	}
	if optionalAbsent {
		limit++
		if n-FrameHeaderSize == m.Type().MaxSize() {
			return // such a frame at the maximum size cannot be re-encoded with the field
		}
	}
	re, err := EncodeFrame(nil, m)
	if err != nil {
		t.Fatalf("re-encoding %#v: %v", m, err)
	}
	if len(re) > limit {
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
	for _, s := range []error{ErrFrameTooLarge, ErrUnknownFrameType, ErrTruncated, ErrMalformed, ErrHeadTooLarge, ErrUnsupportedVersion, ErrUnexpectedFrame} {
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
			if !FrameType(in[0]).known() {
				limit = MaxFrameSize // an unknown frame is skipped so that the stream stays in step
			}
			if consumed > FrameHeaderSize+limit {
				t.Fatalf("over-read on error: %d bytes", consumed)
			}
			if errors.Is(err, ErrUnknownFrameType) {
				if n := int(in[1])<<16 | int(in[2])<<8 | int(in[3]); consumed != FrameHeaderSize+n {
					t.Fatalf("unknown frame of %d bytes skipped %d", n, consumed-FrameHeaderSize)
				}
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

// FuzzReadFrameHeader checks that ReadFrameHeader reads exactly the header and judges it as
// ParseFrame does from the header alone.
func FuzzReadFrameHeader(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bytes.NewReader(in)
		typ, n, err := ReadFrameHeader(iotest.OneByteReader(br))
		consumed := len(in) - br.Len()
		if consumed != min(len(in), FrameHeaderSize) {
			t.Fatalf("consumed %d of %d", consumed, len(in))
		}
		// Given only the header, ParseFrame fails on a bad header, else reports truncation
		// (or parses an empty payload).
		_, _, perr := ParseFrame(in[:consumed])
		switch {
		case len(in) == 0:
			if err != io.EOF {
				t.Fatalf("empty input: %v", err)
			}
		case len(in) < FrameHeaderSize:
			if !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("cut header: %v", err)
			}
		case err != nil:
			checkParseError(t, err)
			if perr == nil || err.Error() != perr.Error() {
				t.Fatalf("ReadFrameHeader %v, ParseFrame %v", err, perr)
			}
		default:
			if typ != FrameType(in[0]) || n > typ.MaxSize() || n != int(in[1])<<16|int(in[2])<<8|int(in[3]) {
				t.Fatalf("header % x read as %s, %d", in[:FrameHeaderSize], typ, n)
			}
			if errors.Is(perr, ErrFrameTooLarge) || errors.Is(perr, ErrUnknownFrameType) {
				t.Fatalf("ParseFrame refused the header that ReadFrameHeader accepted: %v", perr)
			}
		}
	})
}

func FuzzParseCode(f *testing.F) {
	for c := range Code(len(codeInfo) + 2) {
		f.Add(c.String())
	}
	for _, s := range []string{"", "code_65535", "code_65536", "code_+1", "code_-1", "code_01", "OK"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := ParseCode(s)
		if !ok {
			return
		}
		if c2, ok := ParseCode(c.String()); !ok || c2 != c {
			t.Fatalf("ParseCode(%q) = %v, but %q parses to %v, %v", s, c, c.String(), c2, ok)
		}
	})
}

// FuzzReadHTTPError checks that any response, including what WriteHTTPError writes, reads as
// an error with a code other than ok and a message, and that WriteHTTPError's own responses
// read back as written.
func FuzzReadHTTPError(f *testing.F) {
	for _, err := range []error{
		&Error{Code: CodeNotHolder, Message: "moved", RetryAfter: 2 * time.Second},
		&Error{Code: CodeServiceUnknown, Message: `no service "x" ✓`},
		&Error{Code: 300, Message: "future"},
		errors.New("boom"),
	} {
		rec := httptest.NewRecorder()
		WriteHTTPError(rec, err)
		f.Add(rec.Code, rec.Header().Get(HeaderError), rec.Header().Get("Retry-After"), rec.Body.String())
	}
	f.Add(502, "", "", "<html>bad gateway</html>")
	f.Add(200, "ok", "", `{"error":"ok"}`)
	f.Add(499, "client_canceled", "x", `{"error":"client_canceled","message":""}`)
	f.Fuzz(func(t *testing.T, status int, code, retryAfter, body string) {
		h := http.Header{}
		h.Set(HeaderError, code)
		h.Set("Retry-After", retryAfter)
		resp := &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}
		e := ReadHTTPError(resp)
		if status < 400 {
			if e != nil {
				t.Fatalf("status %d read as error %v", status, e)
			}
			return
		}
		if e == nil || e.Code == CodeOK || e.Message == "" || e.RetryAfter < 0 {
			t.Fatalf("ReadHTTPError = %#v", e)
		}
		if !utf8.ValidString(e.Message) {
			return // JSON replaces invalid UTF-8: the text cannot round-trip
		}
		// What WriteHTTPError writes for e reads back as e.
		rec := httptest.NewRecorder()
		WriteHTTPError(rec, e)
		got := ReadHTTPError(rec.Result())
		if got == nil || got.Code != e.Code || got.Message != e.Message {
			t.Fatalf("round trip of %#v: %#v", e, got)
		}
	})
}
