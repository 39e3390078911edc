package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// sampleMessages returns one or more values of every message type, covering
// empty, unicode and large fields.
func sampleMessages() []Message {
	deadline := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	return []Message{
		&Hello{},
		&Hello{Version: ProtocolVersion, Token: "glagent-secret", AgentVersion: "v1.2.3", Replica: "agentd-0", Services: []string{"kubernetes", "prometheus", ""}},
		&Hello{Version: 1 << 63, Token: "tøkén ✓", Services: []string{"日本語"}},
		&Welcome{},
		&Welcome{Version: 1, AgentID: "42", ConnectionID: "c-1", InstanceID: "kasd-a"},
		&Error{},
		&Error{Code: CodeOverloaded, Message: "too many streams", RetryAfter: 1500 * time.Millisecond},
		&Error{Code: Code(999), Message: "from the future ✓"},
		&GoAway{},
		&GoAway{Reason: "shutting down ✓"},
		&Ping{Padding: make([]byte, 48)},
		&PeerHello{},
		&PeerHello{Version: 1, InstanceID: "kasd-b", Proof: []byte{0, 1, 2, 0xff}},
		&Request{Kind: KindHTTP, Service: "kubernetes"},
		&Request{Kind: KindGitLab},
		&Request{Kind: KindHTTP, Service: "k8s", RequestID: "r-1", Deadline: deadline, Meta: []KV{
			{"impersonate-user", "alice"}, {"impersonate-group", "a"}, {"impersonate-group", "b"}, {"", ""}, {"ключ", "значение"},
		}},
		&Request{Kind: KindHTTP, Service: "s", Deadline: time.Unix(-5, 0)},
		&Result{},
		&Result{Code: CodeServiceUnknown, Message: "no service \"x\""},
		&Forward{AgentID: "42"},
		&Forward{AgentID: "42", Origin: "kasd-a"},
	}
}

// maxSizeMessages returns messages whose payload is exactly their type's
// MaxSize.
func maxSizeMessages(t testing.TB) []Message {
	fill := func(m Message, set func(n int)) Message {
		set(0)
		base := len(m.AppendPayload(nil))
		// A string of n bytes costs n + uvarintLen(n); for n in [128, 16383] the prefix is 2.
		set(m.Type().MaxSize() - base - 1)
		if got := len(m.AppendPayload(nil)); got != m.Type().MaxSize() {
			t.Fatalf("%s: payload %d, want %d", m.Type(), got, m.Type().MaxSize())
		}
		return m
	}
	h := &Hello{Version: 1, Services: []string{"a"}}
	w := &Welcome{Version: 1, AgentID: "1"}
	e := &Error{Code: CodeInternal, RetryAfter: time.Second}
	g := &GoAway{}
	p := &PeerHello{Version: 1}
	r := &Request{Kind: KindHTTP, Service: "s", Deadline: time.Now(), Meta: []KV{{"k", "v"}}}
	res := &Result{Code: CodeNotHolder}
	f := &Forward{AgentID: "1"}
	return []Message{
		fill(h, func(n int) { h.Token = strings.Repeat("t", n) }),
		fill(w, func(n int) { w.InstanceID = strings.Repeat("i", n) }),
		fill(e, func(n int) { e.Message = strings.Repeat("m", n) }),
		fill(g, func(n int) { g.Reason = strings.Repeat("r", n) }),
		fill(p, func(n int) { p.Proof = bytes.Repeat([]byte{7}, n) }),
		fill(r, func(n int) { r.Meta[0].Value = strings.Repeat("v", n) }),
		fill(res, func(n int) { res.Message = strings.Repeat("m", n) }),
		fill(f, func(n int) { f.Origin = strings.Repeat("o", n) }),
	}
}

// normalize makes parsed and original messages comparable: nil and empty
// slices are the same on the wire, Deadline compares by instant, Err is not
// encoded, and RetryAfter is encoded in whole milliseconds.
func normalize(m Message) Message {
	switch m := m.(type) {
	case *Hello:
		c := *m
		if len(c.Services) == 0 {
			c.Services = nil
		}
		return &c
	case *PeerHello:
		c := *m
		if len(c.Proof) == 0 {
			c.Proof = nil
		}
		return &c
	case *Request:
		c := *m
		if len(c.Meta) == 0 {
			c.Meta = nil
		}
		if !c.Deadline.IsZero() {
			c.Deadline = time.Unix(0, c.Deadline.UnixNano())
		}
		return &c
	case *Error:
		c := *m
		c.Err = nil
		c.RetryAfter = millisToDuration(durationToMillis(c.RetryAfter))
		return &c
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	msgs := append(sampleMessages(), maxSizeMessages(t)...)
	for _, m := range msgs {
		t.Run(m.Type().String(), func(t *testing.T) {
			frame := AppendFrame(nil, m)
			if got, want := len(frame), FrameHeaderSize+len(m.AppendPayload(nil)); got != want {
				t.Fatalf("frame length %d, want %d", got, want)
			}
			want := normalize(m)

			got, err := ReadFrame(bytes.NewReader(frame))
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			if !reflect.DeepEqual(normalize(got), want) {
				t.Fatalf("ReadFrame:\n got %#v\nwant %#v", got, want)
			}
			// Byte-at-a-time reads must give the same result.
			got, err = ReadFrame(iotest.OneByteReader(bytes.NewReader(frame)))
			if err != nil || !reflect.DeepEqual(normalize(got), want) {
				t.Fatalf("ReadFrame(OneByteReader) = %#v, %v", got, err)
			}

			got, n, err := ParseFrame(append(frame, "trailing"...))
			if err != nil {
				t.Fatalf("ParseFrame: %v", err)
			}
			if n != len(frame) {
				t.Fatalf("ParseFrame consumed %d, want %d", n, len(frame))
			}
			if !reflect.DeepEqual(normalize(got), want) {
				t.Fatalf("ParseFrame:\n got %#v\nwant %#v", got, want)
			}
			if !bytes.Equal(AppendFrame(nil, got), frame) {
				t.Fatalf("re-encoding differs")
			}

			var buf bytes.Buffer
			if err := WriteFrame(&buf, m); err != nil {
				t.Fatalf("WriteFrame: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), frame) {
				t.Fatalf("WriteFrame wrote % x, want % x", buf.Bytes(), frame)
			}
		})
	}
}

func TestDeadline(t *testing.T) {
	for _, d := range []time.Time{
		{},
		time.Unix(1, 1),
		time.Unix(-1, 0),
		time.Date(2262, 4, 11, 0, 0, 0, 0, time.UTC),
		time.Now(),
		time.Now().Add(time.Hour).In(time.FixedZone("x", 3600)),
	} {
		m, _, err := ParseFrame(AppendFrame(nil, &Request{Kind: KindGitLab, Deadline: d}))
		if err != nil {
			t.Fatal(err)
		}
		got := m.(*Request).Deadline
		if got.IsZero() != d.IsZero() || (!d.IsZero() && (!got.Equal(d) || got.UnixNano() != d.UnixNano())) {
			t.Errorf("deadline %v round-tripped to %v", d, got)
		}
	}
	// Edge cases that cannot round-trip exactly keep their meaning.
	for _, tc := range []struct {
		in   time.Time
		want int64
	}{
		{time.Unix(0, 0), -1}, // the epoch is a past deadline, not "none"
		{time.Date(1, 2, 3, 0, 0, 0, 0, time.UTC), -1 << 63},
		{time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 1<<63 - 1},
	} {
		m, _, err := ParseFrame(AppendFrame(nil, &Request{Kind: KindGitLab, Deadline: tc.in}))
		if err != nil {
			t.Fatal(err)
		}
		if got := m.(*Request).Deadline; got.IsZero() || got.UnixNano() != tc.want {
			t.Errorf("deadline %v -> %v (%d), want %d", tc.in, got, got.UnixNano(), tc.want)
		}
	}
}

func TestRetryAfterRounding(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{
		{0, 0},
		{-time.Second, 0},
		{time.Nanosecond, time.Millisecond},
		{1500 * time.Microsecond, 2 * time.Millisecond},
		{time.Duration(1<<63 - 1), time.Duration(maxRetryMillis) * time.Millisecond},
	} {
		m, _, err := ParseFrame(AppendFrame(nil, &Error{Code: CodeOverloaded, RetryAfter: tc.in}))
		if err != nil {
			t.Fatal(err)
		}
		if got := m.(*Error).RetryAfter; got != tc.want {
			t.Errorf("RetryAfter %v -> %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestTextIsCutToFit: long human-readable text must never make a frame
// that the peer rejects.
func TestTextIsCutToFit(t *testing.T) {
	long := strings.Repeat("✓", 10000) // 3 bytes per rune
	for _, m := range []Message{
		&Error{Code: CodeInternal, Message: long, RetryAfter: time.Hour},
		&Result{Code: CodeServiceUnavailable, Message: long},
		&GoAway{Reason: long},
	} {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, m); err != nil {
			t.Fatalf("%s: %v", m.Type(), err)
		}
		if buf.Len() > FrameHeaderSize+m.Type().MaxSize() || buf.Len() < m.Type().MaxSize()-8 {
			t.Fatalf("%s: frame is %d bytes, max payload %d", m.Type(), buf.Len(), m.Type().MaxSize())
		}
		got, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("%s: %v", m.Type(), err)
		}
		var text string
		switch g := got.(type) {
		case *Error:
			text = g.Message
			if g.RetryAfter != time.Hour {
				t.Errorf("RetryAfter = %v", g.RetryAfter)
			}
		case *Result:
			text = g.Message
		case *GoAway:
			text = g.Reason
		}
		if !strings.HasPrefix(long, text) || len(text)%3 != 0 || text == "" {
			t.Errorf("%s: text cut to %d bytes, not on a rune boundary or empty", m.Type(), len(text))
		}
	}
}

func TestWriteFrameRejectsOversize(t *testing.T) {
	for _, m := range []Message{
		&Hello{Version: 1, Token: strings.Repeat("x", 16<<10)},
		&Request{Kind: KindHTTP, Service: "s", Meta: []KV{{"k", strings.Repeat("v", 16<<10)}}},
		&Forward{AgentID: strings.Repeat("a", 5000)},
		&PeerHello{Proof: make([]byte, 5000)},
	} {
		var buf bytes.Buffer
		err := WriteFrame(&buf, m)
		if !errors.Is(err, ErrFrameTooLarge) || CodeOf(err) != CodeTooLarge {
			t.Errorf("%s: WriteFrame err = %v", m.Type(), err)
		}
		if buf.Len() != 0 {
			t.Errorf("%s: WriteFrame wrote %d bytes on error", m.Type(), buf.Len())
		}
		b, err := EncodeFrame([]byte("keep"), m)
		if err == nil || string(b) != "keep" {
			t.Errorf("%s: EncodeFrame = %q, %v", m.Type(), b, err)
		}
		// AppendFrame still produces something the receiver rejects from the header.
		_, _, err = ParseFrame(AppendFrame(nil, m))
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("%s: ParseFrame(oversize) err = %v", m.Type(), err)
		}
	}
	// A payload beyond the u24 range is declared as the u24 maximum, never wrapped.
	huge := &Hello{Token: strings.Repeat("x", 1<<24)}
	frame := AppendFrame(nil, huge)
	if frame[1] != 0xff || frame[2] != 0xff || frame[3] != 0xff {
		t.Errorf("huge frame header % x", frame[:4])
	}
}

// writeCounter counts Write calls.
type writeCounter struct {
	calls int
	bytes.Buffer
}

func (w *writeCounter) Write(p []byte) (int, error) { w.calls++; return w.Buffer.Write(p) }

func TestWriteFrameSingleWrite(t *testing.T) {
	for _, m := range sampleMessages() {
		var w writeCounter
		if err := WriteFrame(&w, m); err != nil {
			t.Fatal(err)
		}
		if w.calls != 1 {
			t.Errorf("%s: %d Write calls", m.Type(), w.calls)
		}
	}
}

func TestReadFrameDoesNotOverRead(t *testing.T) {
	const rest = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, m := range sampleMessages() {
		stream := append(AppendFrame(nil, m), rest...)
		for name, r := range map[string]io.Reader{
			"plain":   bytes.NewReader(stream),
			"onebyte": iotest.OneByteReader(bytes.NewReader(stream)),
			"half":    iotest.HalfReader(bytes.NewReader(stream)),
		} {
			if _, err := ReadFrame(r); err != nil {
				t.Fatalf("%s/%s: %v", m.Type(), name, err)
			}
			got, err := io.ReadAll(r)
			if err != nil || string(got) != rest {
				t.Fatalf("%s/%s: rest = %q, %v", m.Type(), name, got, err)
			}
		}
	}
	// Two frames back to back, then bytes.
	var b []byte
	b = AppendFrame(b, &Forward{AgentID: "1", Origin: "a"})
	b = AppendFrame(b, &Request{Kind: KindHTTP, Service: "s"})
	b = append(b, rest...)
	r := bytes.NewReader(b)
	if m, err := ReadExpect(r, TypeForward); err != nil || m.(*Forward).AgentID != "1" {
		t.Fatal(m, err)
	}
	if m, err := ReadExpect(r, TypeRequest); err != nil || m.(*Request).Service != "s" {
		t.Fatal(m, err)
	}
	if got, _ := io.ReadAll(r); string(got) != rest {
		t.Fatalf("rest = %q", got)
	}
}

func header(t FrameType, n int) []byte {
	return []byte{byte(t), byte(n >> 16), byte(n >> 8), byte(n)}
}

func payloadFrame(t FrameType, payload []byte) []byte {
	return append(header(t, len(payload)), payload...)
}

func uv(v uint64) []byte { return appendUvarint(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func str(s string) []byte { return appendString(nil, s) }

func TestParseErrors(t *testing.T) {
	type tc struct {
		name     string
		in       []byte
		sentinel error
		code     Code
	}
	var cases []tc
	for typ := FrameType(0); ; typ++ {
		if typ.MaxSize() > 0 {
			cases = append(cases,
				tc{"oversize " + typ.String(), header(typ, typ.MaxSize()+1), ErrFrameTooLarge, CodeProtocol},
				tc{"u24 max " + typ.String(), header(typ, maxLength), ErrFrameTooLarge, CodeProtocol},
				tc{"truncated payload " + typ.String(), append(header(typ, 10), 1, 2, 3), ErrTruncated, CodeProtocol},
			)
		} else {
			cases = append(cases, tc{"unknown " + typ.String(), header(typ, 0), ErrUnknownFrameType, CodeProtocol})
		}
		if typ == 255 {
			break
		}
	}
	cases = append(cases,
		tc{"empty", nil, ErrTruncated, CodeProtocol},
		tc{"header cut", []byte{byte(TypeHello), 0, 0}, ErrTruncated, CodeProtocol},
		tc{"empty hello payload", header(TypeHello, 0), ErrTruncated, CodeProtocol},
		tc{"hello missing services", payloadFrame(TypeHello, cat(uv(1), str("t"), str("v"), str("r"))), ErrTruncated, CodeProtocol},
		tc{"services count > remaining", payloadFrame(TypeHello, cat(uv(1), str(""), str(""), str(""), uv(5), str("a"))), ErrTruncated, CodeProtocol},
		tc{"services count huge", payloadFrame(TypeHello, cat(uv(1), str(""), str(""), str(""), uv(1<<62))), ErrTruncated, CodeProtocol},
		tc{"meta count > remaining/2", payloadFrame(TypeRequest, cat(uv(1), str("s"), str(""), uv(0), uv(2), str(""), str(""), str(""))), ErrTruncated, CodeProtocol},
		tc{"meta value missing", payloadFrame(TypeRequest, cat(uv(1), str("s"), str(""), uv(0), uv(1), str("k"), []byte{0x80})), ErrTruncated, CodeProtocol},
		tc{"string length overflow", payloadFrame(TypeGoAway, cat(uv(5), []byte("abc"))), ErrTruncated, CodeProtocol},
		tc{"string length huge", payloadFrame(TypeGoAway, cat(uv(1<<63), []byte("abc"))), ErrTruncated, CodeProtocol},
		tc{"varint cut", payloadFrame(TypeWelcome, []byte{0x80, 0x80}), ErrTruncated, CodeProtocol},
		tc{"varint 11 bytes", payloadFrame(TypeWelcome, bytes.Repeat([]byte{0xff}, 11)), ErrMalformed, CodeProtocol},
		tc{"varint > 64 bits", payloadFrame(TypeWelcome, append(bytes.Repeat([]byte{0xff}, 9), 0x02)), ErrMalformed, CodeProtocol},
		tc{"code > 16 bits", payloadFrame(TypeResult, cat(uv(1<<16), str(""))), ErrMalformed, CodeProtocol},
		tc{"error code > 16 bits", payloadFrame(TypeError, cat(uv(1<<20), str(""), uv(0))), ErrMalformed, CodeProtocol},
		tc{"kind 0", payloadFrame(TypeRequest, cat(uv(0), str("s"), str(""), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"kind 3", payloadFrame(TypeRequest, cat(uv(3), str("s"), str(""), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"kind 257", payloadFrame(TypeRequest, cat(uv(257), str("s"), str(""), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"http request without service", payloadFrame(TypeRequest, cat(uv(1), str(""), str("id"), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"forward without agent", payloadFrame(TypeForward, cat(str(""), str("origin"))), ErrMalformed, CodeProtocol},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, n, err := ParseFrame(c.in)
			check := func(fn string, m Message, err error) {
				t.Helper()
				if m != nil || !errors.Is(err, c.sentinel) || CodeOf(err) != c.code {
					t.Fatalf("%s = %v, %v (code %v); want %v, %v", fn, m, err, CodeOf(err), c.sentinel, c.code)
				}
				var e *Error
				if !errors.As(err, &e) || e.Message == "" {
					t.Fatalf("%s: %#v is not an *Error with a message", fn, err)
				}
			}
			check("ParseFrame", m, err)
			if n != 0 {
				t.Fatalf("ParseFrame consumed %d on error", n)
			}
			if len(c.in) == 0 {
				return // ReadFrame: clean EOF, tested below
			}
			m, err = ReadFrame(bytes.NewReader(c.in))
			check("ReadFrame", m, err)
		})
	}
}

// TestReadFrameSkipsUnknown: a frame of an unknown type is consumed whole, so
// that the reader can go on with the next frame (a newer peer's message).
func TestReadFrameSkipsUnknown(t *testing.T) {
	in := append(append(header(77, 5), "hello"...), AppendFrame(nil, &GoAway{Reason: "drain"})...)
	r := bytes.NewReader(in)
	if _, err := ReadFrame(r); !errors.Is(err, ErrUnknownFrameType) {
		t.Fatalf("unknown frame: err = %v", err)
	}
	m, err := ReadFrame(r)
	if err != nil || m.(*GoAway).Reason != "drain" {
		t.Fatalf("frame after the unknown one: %v %v", m, err)
	}
}

// TestReadFrameChecksHeaderFirst: an oversize frame is rejected from its
// header, without reading (or waiting for) the payload.
func TestReadFrameChecksHeaderFirst(t *testing.T) {
	for _, h := range [][]byte{header(TypeGoAway, 2000), header(TypeRequest, maxLength)} {
		r := io.MultiReader(bytes.NewReader(h), iotest.ErrReader(errors.New("payload must not be read")))
		if _, err := ReadFrame(r); CodeOf(err) != CodeProtocol {
			t.Errorf("header % x: err = %v", h, err)
		}
	}
}

func TestReadFrameEOF(t *testing.T) {
	if _, err := ReadFrame(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("empty stream: err = %v, want io.EOF", err)
	}
	frame := AppendFrame(nil, &Result{Code: CodeOK, Message: "fine"})
	for i := 1; i < len(frame); i++ {
		_, err := ReadFrame(bytes.NewReader(frame[:i]))
		if !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) || CodeOf(err) != CodeProtocol {
			t.Errorf("cut at %d: err = %v", i, err)
		}
	}
	// Other reader errors pass through, classified by CodeOf.
	boom := errors.New("stream reset")
	_, err := ReadFrame(io.MultiReader(bytes.NewReader(frame[:6]), iotest.ErrReader(boom)))
	if !errors.Is(err, boom) || CodeOf(err) != CodeInternal {
		t.Errorf("reset mid-frame: err = %v", err)
	}
	_, err = ReadFrame(iotest.ErrReader(boom))
	if !errors.Is(err, boom) {
		t.Errorf("reset before header: err = %v", err)
	}
}

func TestTrailingBytesIgnored(t *testing.T) {
	for _, m := range sampleMessages() {
		payload := append(m.AppendPayload(nil), "future fields \x00\xff"...)
		got, n, err := ParseFrame(payloadFrame(m.Type(), payload))
		if err != nil {
			t.Fatalf("%s: %v", m.Type(), err)
		}
		if n != FrameHeaderSize+len(payload) {
			t.Fatalf("%s: consumed %d", m.Type(), n)
		}
		if !reflect.DeepEqual(normalize(got), normalize(m)) {
			t.Fatalf("%s: got %#v, want %#v", m.Type(), got, m)
		}
	}
}

func TestVersionsAreParsedNotJudged(t *testing.T) {
	for _, m := range []Message{&Hello{Version: 7}, &PeerHello{Version: 0}, &Welcome{Version: 2}} {
		if _, _, err := ParseFrame(AppendFrame(nil, m)); err != nil {
			t.Errorf("%s: %v", m.Type(), err)
		}
	}
	if err := CheckVersion(ProtocolVersion); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{0, 2, 1 << 63} {
		err := CheckVersion(v)
		if !errors.Is(err, ErrUnsupportedVersion) || CodeOf(err) != CodeUnsupportedVersion {
			t.Errorf("CheckVersion(%d) = %v", v, err)
		}
	}
}

func TestReadExpect(t *testing.T) {
	frame := AppendFrame(nil, &Welcome{Version: 1, AgentID: "a"})
	m, err := ReadExpect(bytes.NewReader(frame), TypeWelcome)
	if err != nil || m.(*Welcome).AgentID != "a" {
		t.Fatalf("ReadExpect(welcome) = %v, %v", m, err)
	}

	refusal := &Error{Code: CodeUnauthenticated, Message: "bad token", RetryAfter: 2 * time.Second}
	m, err = ReadExpect(bytes.NewReader(AppendFrame(nil, refusal)), TypeWelcome)
	var e *Error
	if m != nil || !errors.As(err, &e) || e.Code != CodeUnauthenticated || e.Message != "bad token" || e.RetryAfter != 2*time.Second {
		t.Fatalf("ReadExpect(error frame) = %v, %v", m, err)
	}
	if !errors.Is(err, &Error{Code: CodeUnauthenticated}) {
		t.Fatalf("errors.Is by code failed")
	}
	// Asking for an Error frame returns it as a message.
	m, err = ReadExpect(bytes.NewReader(AppendFrame(nil, refusal)), TypeError)
	if err != nil || m.(*Error).Code != CodeUnauthenticated {
		t.Fatalf("ReadExpect(want error) = %v, %v", m, err)
	}

	m, err = ReadExpect(bytes.NewReader(AppendFrame(nil, &GoAway{Reason: "bye"})), TypeResult)
	if m != nil || !errors.Is(err, ErrUnexpectedFrame) || CodeOf(err) != CodeProtocol {
		t.Fatalf("ReadExpect(unexpected) = %v, %v", m, err)
	}
	if _, err := ReadExpect(bytes.NewReader(nil), TypeResult); err != io.EOF {
		t.Fatalf("ReadExpect(empty) err = %v", err)
	}
}

func TestFrameTypeNames(t *testing.T) {
	want := map[FrameType]struct {
		name string
		max  int
	}{
		TypeHello: {"hello", 16 << 10}, TypeWelcome: {"welcome", 4 << 10}, TypeError: {"error", 4 << 10},
		TypeGoAway: {"goaway", 1 << 10}, TypePeerHello: {"peer_hello", 4 << 10}, TypeRequest: {"request", 16 << 10},
		TypeResult: {"result", 4 << 10}, TypeForward: {"forward", 4 << 10}, TypePing: {"ping", 1 << 10},
	}
	for i := 0; i < 256; i++ {
		typ := FrameType(i)
		w, ok := want[typ]
		if !ok {
			w.name = "type_" + strconv.Itoa(i)
		}
		if typ.String() != w.name || typ.MaxSize() != w.max {
			t.Errorf("FrameType(%d) = %q, %d; want %q, %d", i, typ.String(), typ.MaxSize(), w.name, w.max)
		}
		if typ.MaxSize() > MaxFrameSize {
			t.Errorf("%s: MaxSize above MaxFrameSize", typ)
		}
	}
}

func TestRequestMeta(t *testing.T) {
	r := &Request{Meta: []KV{{"impersonate-user", "alice"}, {"impersonate-group", "a"}, {"x", ""}, {"impersonate-group", "b"}}}
	if v, ok := r.MetaValue("impersonate-user"); !ok || v != "alice" {
		t.Errorf("MetaValue = %q, %v", v, ok)
	}
	if v, ok := r.MetaValue("x"); !ok || v != "" {
		t.Errorf("MetaValue(x) = %q, %v", v, ok)
	}
	if _, ok := r.MetaValue("missing"); ok {
		t.Errorf("MetaValue(missing) found")
	}
	if got := r.MetaValues("impersonate-group"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("MetaValues = %q", got)
	}
	if got := r.MetaValues("missing"); got != nil {
		t.Errorf("MetaValues(missing) = %q", got)
	}
}

func TestResult(t *testing.T) {
	if err := (&Result{Code: CodeOK, Message: "ignored"}).Err(); err != nil {
		t.Fatal(err)
	}
	err := (&Result{Code: CodeNotHolder, Message: "moved"}).Err()
	if !errors.Is(err, &Error{Code: CodeNotHolder, Message: "moved"}) || CodeOf(err) != CodeNotHolder {
		t.Fatalf("Err() = %v", err)
	}
	if r := ResultOf(nil); r.Code != CodeOK || r.Message != "" {
		t.Fatalf("ResultOf(nil) = %+v", r)
	}
	r := ResultOf(Errorf(CodeServiceUnavailable, "dial: %w", errors.New("refused")))
	if r.Code != CodeServiceUnavailable || r.Message != "dial: refused" {
		t.Fatalf("ResultOf = %+v", r)
	}
}

func TestSecretsRedacted(t *testing.T) {
	h := &Hello{Version: 1, Token: "s3cret-token", Services: []string{"k"}}
	p := &PeerHello{Version: 1, InstanceID: "a", Proof: []byte("s3cret-proof")}
	for _, s := range []string{
		fmt.Sprintf("%v", h), fmt.Sprintf("%+v", h), fmt.Sprintf("%#v", h), fmt.Sprintf("%s", h),
		fmt.Sprintf("%v", p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p),
		fmt.Sprintf("%v", h.LogValue()), fmt.Sprintf("%v", p.LogValue()),
	} {
		if strings.Contains(s, "s3cret") || strings.Contains(s, "115 51 99") {
			t.Errorf("secret leaked: %s", s)
		}
	}
}
