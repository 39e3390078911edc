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

// getPods is a realistic request head: kubectl listing pods, ten header fields.
func getPods() *Request {
	return &Request{
		Kind:      KindHTTP,
		Service:   "kubernetes",
		RequestID: "01J9Z8W3K4X5Y6Z7A8B9C0D1E2",
		Deadline:  time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC),
		Meta:      []KV{{"impersonate-user", "alice@example.com"}, {"impersonate-group", "developers"}, {"impersonate-group", "oncall"}},
		Method:    "GET",
		Target:    "/api/v1/namespaces/default/pods?limit=500",
		Host:      "kas.example.com",
		Header: []KV{
			{"Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"},
			{"User-Agent", "kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc"},
			{"Authorization", "Bearer pat:42:glpat-xxxxxxxxxxxxxxxxxxxx"},
			{"Kubectl-Command", "kubectl get"},
			{"Kubectl-Session", "8b1c0f0e-2d5c-4e7a-9d61-0c1a7a2f4b11"},
			{"Accept-Encoding", "gzip"},
			{"X-Forwarded-For", "203.0.113.7"},
			{"X-Forwarded-Proto", "https"},
			{"X-Forwarded-Host", "kas.example.com"},
			{"Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		},
	}
}

// sampleMessages returns one or more values of every message type, covering
// empty, unicode and large fields, and realistic request and response heads.
func sampleMessages() []Message {
	deadline := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	return []Message{
		&Hello{},
		&Hello{Version: ProtocolVersion, Token: "glagent-secret", AgentVersion: "v1.2.3", Replica: "agentd-0", Services: []string{"kubernetes", "prometheus", ""}},
		&Hello{Version: 1 << 63, Token: "tøkén ✓", Services: []string{"日本語"}},
		&Hello{Version: ProtocolVersion, Token: "t", Process: "p-1", Features: FeatureControlOnStreams | 1<<40},
		&Welcome{},
		&Welcome{Version: 1, AgentID: "42", ConnectionID: "c-1", InstanceID: "kasd-a"},
		&Welcome{Version: ProtocolVersion, AgentID: "42", ConnectionID: "c-1", InstanceID: "kasd-a", Features: FeatureControlOnStreams},
		&Error{},
		&Error{Code: CodeOverloaded, Message: "too many streams", RetryAfter: 1500 * time.Millisecond},
		&Error{Code: CodeNotHolder, Message: "agent 42 is held by kasd-b"},
		&Error{Code: Code(999), Message: "from the future ✓"},
		&GoAway{},
		&GoAway{Reason: "shutting down ✓"},
		&Ping{Padding: make([]byte, 48)},
		&PeerHello{},
		&PeerHello{Version: 1, InstanceID: "kasd-b", Proof: []byte{0, 1, 2, 0xff}},
		&PeerHello{Version: ProtocolVersion, InstanceID: "kasd-b", Proof: []byte{0, 1, 2, 0xff}, FleetID: "f-0123456789abcdef"},

		// Requests. Meta is not a header: its keys and values are not checked as fields.
		&Request{Kind: KindHTTP, Service: "kubernetes", Method: "GET", Target: "/"},
		&Request{Kind: KindGitLab, Method: "POST", Target: "/api/v4/internal/kubernetes/modules/starboard_vulnerability/policies_configuration", ContentLength: -1, Flags: FlagBody},
		&Request{Kind: KindHTTP, Service: "k8s", RequestID: "r-1", Deadline: deadline, Method: "OPTIONS", Target: "*", Meta: []KV{
			{MetaCaller, "ci-bot@example.com"}, {"impersonate-user", "alice"}, {"impersonate-group", "a"}, {"impersonate-group", "b"}, {"", ""}, {"ключ", "значение"},
		}},
		&Request{Kind: KindHTTP, Service: "s", Deadline: time.Unix(-5, 0), Method: "M-SEARCH", Target: "/a/b?c=d&e=%2F;x@y:z~!$'()*+,"},
		getPods(),
		// A POST with a content length, its body held until Accepted.
		&Request{Kind: KindHTTP, Service: "kubernetes", RequestID: "r-2", Method: "POST", Target: "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create",
			Host: "kas.example.com", Header: []KV{{"Content-Type", "application/json"}, {"Accept", "application/json"}, {"User-Agent", "kubectl/v1.31.0"}},
			ContentLength: 1234, Flags: FlagBody | FlagGated},
		// An upgrade (kubectl exec): Upgrade is carried, Connection is not.
		&Request{Kind: KindHTTP, Service: "kubernetes", Method: "POST", Target: "/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&stdout=true&tty=true",
			Host: "kas.example.com", Header: []KV{{"Upgrade", "SPDY/3.1"}, {"X-Stream-Protocol-Version", "v5.channel.k8s.io"}, {"X-Stream-Protocol-Version", "v4.channel.k8s.io"}},
			Flags: FlagUpgrade},
		// A body with trailers (gRPC): framed, length unknown.
		&Request{Kind: KindHTTP, Service: "grpc", Method: "POST", Target: "/grpc.health.v1.Health/Check",
			Header: []KV{{"Content-Type", "application/grpc"}, {"Grpc-Timeout", "1S"}}, ContentLength: -1, Flags: FlagBody | FlagFramed},
		// Edge values that are valid: empty, tab and obs-text values, every token character.
		&Request{Kind: KindHTTP, Service: "s", Method: "PATCH", Target: "/", Host: "[::1]:8080",
			Header:        []KV{{"X-Empty", ""}, {"X-Tab", "\ta b\t"}, {"X-Obs", "\x80\xff caf\xc3\xa9"}, {"!#$%&'*+-.^_`|~09azAZ", "v"}},
			ContentLength: 1<<63 - 1, Flags: FlagBody | 1<<40},

		// Responses.
		&Response{Status: 100},
		&Response{Status: 103, Header: []KV{{"Link", "</style.css>; rel=preload; as=style"}}, ContentLength: -1},
		&Response{Status: 101, Header: []KV{{"Upgrade", "SPDY/3.1"}, {"X-Stream-Protocol-Version", "v4.channel.k8s.io"}}},
		&Response{Status: 200, ContentLength: 3412, Header: []KV{
			{"Audit-Id", "6b1c6c3e-3f43-4a5e-a1f6-9d1d1b8d7f7a"},
			{"Cache-Control", "no-cache, private"},
			{"Content-Type", "application/json"},
			{"Date", "Tue, 01 Oct 2024 12:00:00 GMT"},
			{"X-Kubernetes-Pf-Flowschema-Uid", "a8c2a3c1-1f0b-4c55-8b1a-3c0c1f9e2d11"},
			{"X-Kubernetes-Pf-Prioritylevel-Uid", "e1c2d3b4-5a6f-4b7c-8d9e-0f1a2b3c4d5e"},
			{"Set-Cookie", "a=1"}, {"Set-Cookie", "b=2"},
		}},
		&Response{Status: 204},
		&Response{Status: 200, Header: []KV{{"Content-Type", "application/grpc"}}, ContentLength: -1, Flags: FlagFramed},
		&Response{Status: 999, ContentLength: 1 << 62},

		&Data{Payload: []byte(`{"kind":"PodList","apiVersion":"v1","items":[`)},
		&Data{},
		&Data{Payload: []byte{0, 1, 2, 0xff, 0xfe}},
		&Trailers{},
		&Trailers{Header: []KV{{"Grpc-Status", "0"}, {"Grpc-Message", ""}}},
		&Accepted{},
		&Forward{AgentID: "42"},
		&Forward{AgentID: "42", Origin: "kasd-a"},
	}
}

// manyFields returns n valid header fields.
func manyFields(n int) []KV {
	kvs := make([]KV, n)
	for i := range kvs {
		kvs[i] = KV{"X-F" + strconv.Itoa(i), "v"}
	}
	return kvs
}

// limitMessages returns messages at the limits of the stream protocol: payloads of exactly
// their type's MaxSize, and heads of exactly MaxHeaderFields fields.
func limitMessages(t testing.TB) []Message {
	t.Helper()
	fill := func(m Message, set func(n int)) Message {
		t.Helper()
		set(0)
		base := len(m.AppendPayload(nil)) // includes the empty string's 1-byte length prefix
		size := m.Type().MaxSize()
		for prefix := 1; prefix <= 3; prefix++ {
			if n := size - base + 1 - prefix; uvarintLen(uint64(n)) == prefix {
				set(n)
				break
			}
		}
		if got := len(m.AppendPayload(nil)); got != size {
			t.Fatalf("%s: payload %d, want %d", m.Type(), got, size)
		}
		return m
	}
	h := &Hello{Version: 1, Services: []string{"a"}}
	w := &Welcome{Version: 1, AgentID: "1"}
	e := &Error{Code: CodeInternal, RetryAfter: time.Second}
	g := &GoAway{}
	p := &PeerHello{Version: 1}
	r := getPods()
	resp := &Response{Status: 200, Header: []KV{{"Content-Type", "text/plain"}, {"X-Big", ""}}, ContentLength: -1}
	tr := &Trailers{Header: []KV{{"X-Big", ""}}}
	f := &Forward{AgentID: "1"}
	return []Message{
		fill(h, func(n int) { h.Token = strings.Repeat("t", n) }),
		fill(w, func(n int) { w.InstanceID = strings.Repeat("i", n) }),
		fill(e, func(n int) { e.Message = strings.Repeat("m", n) }),
		fill(g, func(n int) { g.Reason = strings.Repeat("r", n) }),
		fill(p, func(n int) { p.Proof = bytes.Repeat([]byte{7}, n) }),
		fill(r, func(n int) { r.Header[3].Value = strings.Repeat("v", n) }),
		fill(resp, func(n int) { resp.Header[1].Value = strings.Repeat("v", n) }),
		fill(tr, func(n int) { tr.Header[0].Value = strings.Repeat("v", n) }),
		fill(f, func(n int) { f.Origin = strings.Repeat("o", n) }),
		&Data{Payload: bytes.Repeat([]byte{0xd7}, MaxDataSize)},
		&Request{Kind: KindHTTP, Service: "s", Method: "GET", Target: "/", Header: manyFields(MaxHeaderFields)},
		&Response{Status: 200, Header: manyFields(MaxHeaderFields)},
		&Trailers{Header: manyFields(MaxHeaderFields)},
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
		if len(c.Header) == 0 {
			c.Header = nil
		}
		if !c.Deadline.IsZero() {
			c.Deadline = time.Unix(0, c.Deadline.UnixNano())
		}
		return &c
	case *Response:
		c := *m
		if len(c.Header) == 0 {
			c.Header = nil
		}
		return &c
	case *Trailers:
		c := *m
		if len(c.Header) == 0 {
			c.Header = nil
		}
		return &c
	case *Data:
		c := *m
		if len(c.Payload) == 0 {
			c.Payload = nil
		}
		return &c
	case *Ping:
		c := *m
		if len(c.Padding) == 0 {
			c.Padding = nil
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
	msgs := append(sampleMessages(), limitMessages(t)...)
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
		m, _, err := ParseFrame(AppendFrame(nil, &Request{Kind: KindGitLab, Method: "GET", Target: "/", Deadline: d}))
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
		m, _, err := ParseFrame(AppendFrame(nil, &Request{Kind: KindGitLab, Method: "GET", Target: "/", Deadline: tc.in}))
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
		&Request{Kind: KindHTTP, Service: "s", Method: "GET", Target: "/", Header: []KV{{"X-Big", strings.Repeat("v", MaxHeadSize)}}},
		&Response{Status: 200, Header: []KV{{"X-Big", strings.Repeat("v", MaxHeadSize)}}},
		&Trailers{Header: []KV{{"X-Big", strings.Repeat("v", MaxHeadSize)}}},
		&Data{Payload: make([]byte, MaxDataSize+1)},
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
	const rest = "raw body bytes \x00\xff"
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
}

// TestRequestStream reads both directions of request streams as SPEC.md describes them: a
// forwarded request with a framed body, and a gated request answered by Accepted, an
// informational response and a final response with a raw body. Data payloads are streamed
// through ReadFrameHeader, as a body reader does.
func TestRequestStream(t *testing.T) {
	req := &Request{Kind: KindHTTP, Service: "grpc", Method: "POST", Target: "/grpc.health.v1.Health/Check",
		Header: []KV{{"Content-Type", "application/grpc"}}, ContentLength: -1, Flags: FlagBody | FlagFramed}
	var in []byte
	in = AppendFrame(in, &Forward{AgentID: "1", Origin: "kasd-a"})
	in = AppendFrame(in, req)
	in = AppendFrame(in, &Data{Payload: []byte("hel")})
	in = AppendFrame(in, &Data{})
	in = AppendFrame(in, &Data{Payload: []byte("lo")})
	in = AppendFrame(in, &Trailers{Header: []KV{{"Grpc-Status", "0"}}})

	r := iotest.HalfReader(bytes.NewReader(in))
	if m, err := ReadExpect(r, TypeForward); err != nil || m.(*Forward).AgentID != "1" {
		t.Fatal(m, err)
	}
	m, err := ReadExpect(r, TypeRequest)
	if err != nil || !reflect.DeepEqual(m, req) || !m.(*Request).Has(FlagFramed) || m.(*Request).Has(FlagUpgrade) {
		t.Fatal(m, err)
	}
	var body bytes.Buffer
	var trailers []KV
	for trailers == nil {
		typ, n, err := ReadFrameHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		switch typ {
		case TypeData:
			if _, err := io.CopyN(&body, r, int64(n)); err != nil {
				t.Fatal(err)
			}
		case TypeTrailers:
			payload := make([]byte, n)
			if _, err := io.ReadFull(r, payload); err != nil {
				t.Fatal(err)
			}
			m, _, err := ParseFrame(payloadFrame(typ, payload))
			if err != nil {
				t.Fatal(err)
			}
			trailers = m.(*Trailers).Header
		default:
			t.Fatalf("unexpected %s frame in a framed body", typ)
		}
	}
	if body.String() != "hello" || !reflect.DeepEqual(trailers, []KV{{"Grpc-Status", "0"}}) {
		t.Fatalf("body %q, trailers %v", body.String(), trailers)
	}
	if _, _, err := ReadFrameHeader(r); err != io.EOF {
		t.Fatalf("after the trailers: %v, want io.EOF (FIN)", err)
	}

	// The acceptor's side: Accepted, one informational response, the final response, raw body.
	in = AppendFrame(nil, &Accepted{})
	in = AppendFrame(in, &Response{Status: 100})
	in = AppendFrame(in, &Response{Status: 200, Header: []KV{{"Content-Type", "text/plain"}}, ContentLength: 5})
	in = append(in, "hello"...)
	r = iotest.OneByteReader(bytes.NewReader(in))
	if _, err := ReadExpect(r, TypeAccepted); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{100, 200} {
		m, err := ReadExpect(r, TypeResponse)
		if err != nil || m.(*Response).Status != want {
			t.Fatalf("want %d: %v, %v", want, m, err)
		}
	}
	if got, _ := io.ReadAll(r); string(got) != "hello" {
		t.Fatalf("body = %q", got)
	}

	// A refusal instead of the response is the typed error, as sent.
	in = AppendFrame(nil, &Error{Code: CodeNotHolder, Message: "moved", RetryAfter: time.Second})
	_, err = ReadExpect(bytes.NewReader(in), TypeResponse)
	if !errors.Is(err, &Error{Code: CodeNotHolder}) || !CodeOf(err).Retryable() {
		t.Fatalf("refusal: %v", err)
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

type invalidHead struct {
	name     string
	m        Message
	sentinel error
}

// invalidHeads returns heads that the parser must refuse: each breaks exactly one rule of a
// valid head (see TestValidHeads for what is accepted), so that nothing a peer sends can
// split or inject a header when the head is written as HTTP/1.1 again.
func invalidHeads() []invalidHead {
	req := func(name string, mod func(r *Request), sentinel error) invalidHead {
		r := getPods()
		mod(r)
		return invalidHead{"request " + name, r, sentinel}
	}
	resp := func(name string, r *Response, sentinel error) invalidHead {
		if r.Header == nil {
			r.Header = []KV{{"Content-Type", "text/plain"}}
		}
		return invalidHead{"response " + name, r, sentinel}
	}
	field := func(k, v string) []KV { return []KV{{"Accept", "*/*"}, {k, v}, {"X-After", "1"}} }
	heads := []invalidHead{
		req("http without service", func(r *Request) { r.Service = "" }, ErrMalformed),
		req("empty method", func(r *Request) { r.Method = "" }, ErrMalformed),
		req("method with space", func(r *Request) { r.Method = "GET /evil" }, ErrMalformed),
		req("method with CRLF", func(r *Request) { r.Method = "GET\r\n" }, ErrMalformed),
		req("method with separator", func(r *Request) { r.Method = "(GET)" }, ErrMalformed),
		req("method with NUL", func(r *Request) { r.Method = "GE\x00T" }, ErrMalformed),
		req("method non-ASCII", func(r *Request) { r.Method = "GÉT" }, ErrMalformed),
		req("empty target", func(r *Request) { r.Target = "" }, ErrMalformed),
		req("relative target", func(r *Request) { r.Target = "api/v1" }, ErrMalformed),
		req("absolute-form target", func(r *Request) { r.Target = "http://evil/api" }, ErrMalformed),
		req("authority-form target", func(r *Request) { r.Target = "evil:443" }, ErrMalformed),
		req("target with space", func(r *Request) { r.Target = "/a HTTP/1.1\r\nX: y" }, ErrMalformed),
		req("target with tab", func(r *Request) { r.Target = "/a\tb" }, ErrMalformed),
		req("target with LF", func(r *Request) { r.Target = "/a\nb" }, ErrMalformed),
		req("target with NUL", func(r *Request) { r.Target = "/a\x00" }, ErrMalformed),
		req("target with DEL", func(r *Request) { r.Target = "/a\x7f" }, ErrMalformed),
		req("target non-ASCII", func(r *Request) { r.Target = "/café" }, ErrMalformed),
		req("target with fragment", func(r *Request) { r.Target = "/a#top" }, ErrMalformed),
		req("target **", func(r *Request) { r.Target = "**" }, ErrMalformed),
		req("host with CRLF", func(r *Request) { r.Host = "a\r\nX-Injected: 1" }, ErrMalformed),
		req("host with NUL", func(r *Request) { r.Host = "a\x00" }, ErrMalformed),
		req("header value with CRLF", func(r *Request) { r.Header = field("X-A", "a\r\nX-Injected: 1") }, ErrMalformed),
		req("header value with CR", func(r *Request) { r.Header = field("X-A", "a\rb") }, ErrMalformed),
		req("header value with LF", func(r *Request) { r.Header = field("X-A", "a\nb") }, ErrMalformed),
		req("header value with NUL", func(r *Request) { r.Header = field("X-A", "a\x00b") }, ErrMalformed),
		req("empty header name", func(r *Request) { r.Header = field("", "v") }, ErrMalformed),
		req("header name with space", func(r *Request) { r.Header = field("X A", "v") }, ErrMalformed),
		req("header name with colon", func(r *Request) { r.Header = field("X-A:", "v") }, ErrMalformed),
		req("pseudo-header name", func(r *Request) { r.Header = field(":authority", "evil") }, ErrMalformed),
		req("header name with CRLF", func(r *Request) { r.Header = field("X-A\r\nX-B", "v") }, ErrMalformed),
		req("header name non-ASCII", func(r *Request) { r.Header = field("Ünicode", "v") }, ErrMalformed),
		req("too many header fields", func(r *Request) { r.Header = manyFields(MaxHeaderFields + 1) }, ErrHeadTooLarge),
		req("content length -2", func(r *Request) { r.ContentLength = -2 }, ErrMalformed),
		req("content length min int64", func(r *Request) { r.ContentLength = -1 << 63 }, ErrMalformed),
		resp("status 0", &Response{Status: 0}, ErrMalformed),
		resp("status 99", &Response{Status: 99}, ErrMalformed),
		resp("status 1000", &Response{Status: 1000}, ErrMalformed),
		resp("status 2^40+200", &Response{Status: 1<<40 + 200}, ErrMalformed),
		resp("header value with CRLF", &Response{Status: 200, Header: field("Set-Cookie", "a=1\r\nLocation: /evil")}, ErrMalformed),
		resp("header name with space", &Response{Status: 200, Header: field("Content Type", "x")}, ErrMalformed),
		resp("too many header fields", &Response{Status: 200, Header: manyFields(MaxHeaderFields + 1)}, ErrHeadTooLarge),
		resp("content length -2", &Response{Status: 200, ContentLength: -2}, ErrMalformed),
		{"trailers value with LF", &Trailers{Header: field("Grpc-Message", "a\nb")}, ErrMalformed},
		{"trailers empty name", &Trailers{Header: field("", "v")}, ErrMalformed},
		{"too many trailer fields", &Trailers{Header: manyFields(MaxHeaderFields + 1)}, ErrHeadTooLarge},
	}
	return heads
}

// TestValidHeads: the edges of each head rule that must still be accepted.
func TestValidHeads(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(r *Request)
	}{
		{"target *", func(r *Request) { r.Method, r.Target = "OPTIONS", "*" }},
		{"target /", func(r *Request) { r.Target = "/" }},
		{"target with every visible character but #", func(r *Request) { r.Target = "/a/b;p?q=%20&r=s:t@u!$'()*+,~[]{}|\\^`\"<>" }},
		{"extension method", func(r *Request) { r.Method = "PROPFIND" }},
		{"token method", func(r *Request) { r.Method = "!#$%&'*+-.^_`|~09azAZ" }},
		{"empty host", func(r *Request) { r.Host = "" }},
		{"empty value", func(r *Request) { r.Header = []KV{{"X-A", ""}} }},
		{"value with tab, space and obs-text", func(r *Request) { r.Header = []KV{{"X-A", "\t a\x80\xff \t"}} }},
		{"no header", func(r *Request) { r.Header = nil }},
		{"content length -1", func(r *Request) { r.ContentLength = -1 }},
		{"content length max", func(r *Request) { r.ContentLength = 1<<63 - 1 }},
		{"unknown flags kept", func(r *Request) { r.Flags = 1 << 63 }},
		{"kind gitlab without service", func(r *Request) { r.Kind, r.Service = KindGitLab, "" }},
	} {
		r := getPods()
		tc.mod(r)
		m, _, err := ParseFrame(AppendFrame(nil, r))
		if err != nil || !reflect.DeepEqual(normalize(m), normalize(r)) {
			t.Errorf("%s: %v, %v", tc.name, m, err)
		}
	}
	for _, st := range []int{100, 101, 199, 200, 599, 999} {
		r := &Response{Status: st, ContentLength: -1}
		if m, _, err := ParseFrame(AppendFrame(nil, r)); err != nil || m.(*Response).Status != st {
			t.Errorf("status %d: %v, %v", st, m, err)
		}
	}
}

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
			cases = append(cases,
				tc{"unknown " + typ.String(), header(typ, 0), ErrUnknownFrameType, CodeProtocol},
				// Too long to skip: as fatal as any oversize frame, in ReadFrame and ParseFrame alike.
				tc{"unknown oversize " + typ.String(), header(typ, MaxFrameSize+1), ErrFrameTooLarge, CodeProtocol},
				tc{"unknown u24 max " + typ.String(), header(typ, maxLength), ErrFrameTooLarge, CodeProtocol},
			)
		}
		if typ == 255 {
			break
		}
	}
	// A request frame as version 1 sent it: no head fields after meta.
	v1Request := cat(uv(1), str("s"), str(""), uv(0), uv(0))
	cases = append(cases,
		tc{"empty", nil, ErrTruncated, CodeProtocol},
		tc{"header cut", []byte{byte(TypeHello), 0, 0}, ErrTruncated, CodeProtocol},
		tc{"empty hello payload", header(TypeHello, 0), ErrTruncated, CodeProtocol},
		tc{"hello missing services", payloadFrame(TypeHello, cat(uv(1), str("t"), str("v"), str("r"))), ErrTruncated, CodeProtocol},
		tc{"services count > remaining", payloadFrame(TypeHello, cat(uv(1), str(""), str(""), str(""), uv(5), str("a"))), ErrTruncated, CodeProtocol},
		tc{"services count huge", payloadFrame(TypeHello, cat(uv(1), str(""), str(""), str(""), uv(1<<62))), ErrTruncated, CodeProtocol},
		tc{"meta count > remaining/2", payloadFrame(TypeRequest, cat(uv(1), str("s"), str(""), uv(0), uv(2), str(""), str(""), str(""))), ErrTruncated, CodeProtocol},
		tc{"meta value missing", payloadFrame(TypeRequest, cat(uv(1), str("s"), str(""), uv(0), uv(1), str("k"), []byte{0x80})), ErrTruncated, CodeProtocol},
		tc{"version 1 request", payloadFrame(TypeRequest, v1Request), ErrTruncated, CodeProtocol},
		tc{"request without flags", payloadFrame(TypeRequest, cat(v1Request, str("GET"), str("/"), str(""), uv(0), uv(0))), ErrTruncated, CodeProtocol},
		tc{"header count > remaining/2", payloadFrame(TypeRequest, cat(v1Request, str("GET"), str("/"), str(""), uv(4), str("a"), str("b"), uv(0), uv(0))), ErrTruncated, CodeProtocol},
		tc{"header count huge", payloadFrame(TypeResponse, cat(uv(200), uv(1<<62), uv(0), uv(0))), ErrTruncated, CodeProtocol},
		tc{"response without flags", payloadFrame(TypeResponse, cat(uv(200), uv(0), uv(0))), ErrTruncated, CodeProtocol},
		tc{"empty trailers payload", header(TypeTrailers, 0), ErrTruncated, CodeProtocol},
		tc{"string length overflow", payloadFrame(TypeGoAway, cat(uv(5), []byte("abc"))), ErrTruncated, CodeProtocol},
		tc{"string length huge", payloadFrame(TypeGoAway, cat(uv(1<<63), []byte("abc"))), ErrTruncated, CodeProtocol},
		tc{"varint cut", payloadFrame(TypeWelcome, []byte{0x80, 0x80}), ErrTruncated, CodeProtocol},
		tc{"varint 11 bytes", payloadFrame(TypeWelcome, bytes.Repeat([]byte{0xff}, 11)), ErrMalformed, CodeProtocol},
		tc{"varint > 64 bits", payloadFrame(TypeWelcome, append(bytes.Repeat([]byte{0xff}, 9), 0x02)), ErrMalformed, CodeProtocol},
		tc{"error code > 16 bits", payloadFrame(TypeError, cat(uv(1<<20), str(""), uv(0))), ErrMalformed, CodeProtocol},
		tc{"kind 0", payloadFrame(TypeRequest, cat(uv(0), str("s"), str(""), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"kind 3", payloadFrame(TypeRequest, cat(uv(3), str("s"), str(""), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"kind 257", payloadFrame(TypeRequest, cat(uv(257), str("s"), str(""), uv(0), uv(0))), ErrMalformed, CodeProtocol},
		tc{"status > 64 bits", payloadFrame(TypeResponse, append(bytes.Repeat([]byte{0xff}, 10), 0, 0, 0)), ErrMalformed, CodeProtocol},
		tc{"forward without agent", payloadFrame(TypeForward, cat(str(""), str("origin"))), ErrMalformed, CodeProtocol},
	)
	for _, h := range invalidHeads() {
		cases = append(cases, tc{h.name, AppendFrame(nil, h.m), h.sentinel, CodeProtocol})
	}
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

// TestReadFrameChecksHeaderFirst: an oversize frame, a head above MaxHeadSize among them, is
// refused from its header, without reading (or waiting for) the payload.
func TestReadFrameChecksHeaderFirst(t *testing.T) {
	for _, h := range [][]byte{
		header(TypeGoAway, 2000),
		header(TypeRequest, MaxHeadSize+1),
		header(TypeResponse, MaxHeadSize+1),
		header(TypeTrailers, MaxHeadSize+1),
		header(TypeData, MaxDataSize+1),
		header(TypeAccepted, 1<<10+1),
		header(TypeResponse, maxLength),
		header(77, MaxFrameSize+1),
	} {
		r := io.MultiReader(bytes.NewReader(h), iotest.ErrReader(errors.New("payload must not be read")))
		if _, err := ReadFrame(r); !errors.Is(err, ErrFrameTooLarge) || CodeOf(err) != CodeProtocol {
			t.Errorf("ReadFrame: header % x: err = %v", h, err)
		}
		r = io.MultiReader(bytes.NewReader(h), iotest.ErrReader(errors.New("payload must not be read")))
		if _, _, err := ReadFrameHeader(r); !errors.Is(err, ErrFrameTooLarge) || CodeOf(err) != CodeProtocol {
			t.Errorf("ReadFrameHeader: header % x: err = %v", h, err)
		}
	}
}

func TestReadFrameHeader(t *testing.T) {
	// A data frame's payload is left to the caller, then the next frame reads as usual.
	in := append(AppendFrame(nil, &Data{Payload: []byte("hello")}), AppendFrame(nil, &Trailers{})...)
	r := bytes.NewReader(in)
	typ, n, err := ReadFrameHeader(r)
	if typ != TypeData || n != 5 || err != nil || r.Len() != len(in)-FrameHeaderSize {
		t.Fatalf("ReadFrameHeader = %s, %d, %v (left %d)", typ, n, err, r.Len())
	}
	if _, err := r.Seek(int64(n), io.SeekCurrent); err != nil {
		t.Fatal(err)
	}
	if m, err := ReadFrame(r); err != nil || m.Type() != TypeTrailers {
		t.Fatalf("next frame: %v, %v", m, err)
	}
	if _, _, err := ReadFrameHeader(r); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}

	// An unknown frame is reported with its length and not consumed: the caller skips it.
	r = bytes.NewReader(append(header(77, 3), "abc"...))
	typ, n, err = ReadFrameHeader(r)
	if typ != 77 || n != 3 || !errors.Is(err, ErrUnknownFrameType) || r.Len() != 3 {
		t.Fatalf("unknown: %s, %d, %v (left %d)", typ, n, err, r.Len())
	}

	for i := 1; i < FrameHeaderSize; i++ {
		_, _, err := ReadFrameHeader(bytes.NewReader(header(TypeData, 1)[:i]))
		if !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) || CodeOf(err) != CodeProtocol {
			t.Errorf("cut at %d: %v", i, err)
		}
	}
	boom := errors.New("stream reset")
	if _, _, err := ReadFrameHeader(io.MultiReader(bytes.NewReader([]byte{byte(TypeData)}), iotest.ErrReader(boom))); !errors.Is(err, boom) {
		t.Errorf("reset in the header: %v", err)
	}

	// Every header is judged exactly as ReadFrame judges it.
	for i := 0; i < 256; i++ {
		typ := FrameType(i)
		for _, n := range []int{0, 1, typ.MaxSize(), typ.MaxSize() + 1, MaxFrameSize, MaxFrameSize + 1, maxLength} {
			h := header(typ, n)
			_, _, herr := ReadFrameHeader(bytes.NewReader(h))
			_, ferr := ReadFrame(io.MultiReader(bytes.NewReader(h), zeros{}))
			headerErr := errors.Is(ferr, ErrFrameTooLarge) || errors.Is(ferr, ErrUnknownFrameType)
			if (herr == nil && headerErr) || (herr != nil && (ferr == nil || herr.Error() != ferr.Error())) {
				t.Errorf("header % x: ReadFrameHeader %v, ReadFrame %v", h, herr, ferr)
			}
		}
	}
}

// zeros reads zero bytes forever.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestReadFrameEOF(t *testing.T) {
	if _, err := ReadFrame(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("empty stream: err = %v, want io.EOF", err)
	}
	frame := AppendFrame(nil, &Response{Status: 200, Header: []KV{{"Content-Type", "text/plain"}}})
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
		if m.Type() == TypeData {
			continue // the whole payload is data: nothing can be appended
		}
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
	for _, v := range []uint64{0, 1, ProtocolVersion + 1, 1 << 63} {
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

	m, err = ReadExpect(bytes.NewReader(AppendFrame(nil, &GoAway{Reason: "bye"})), TypeResponse)
	if m != nil || !errors.Is(err, ErrUnexpectedFrame) || CodeOf(err) != CodeProtocol {
		t.Fatalf("ReadExpect(unexpected) = %v, %v", m, err)
	}
	if _, err := ReadExpect(bytes.NewReader(nil), TypeResponse); err != io.EOF {
		t.Fatalf("ReadExpect(empty) err = %v", err)
	}
}

func TestFrameTypeNames(t *testing.T) {
	want := map[FrameType]struct {
		name string
		max  int
	}{
		TypeHello: {"hello", 16 << 10}, TypeWelcome: {"welcome", 4 << 10}, TypeError: {"error", 4 << 10},
		TypeGoAway: {"goaway", 1 << 10}, TypePeerHello: {"peer_hello", 4 << 10}, TypePing: {"ping", 1 << 10},
		TypeRequest: {"request", 64 << 10}, TypeResponse: {"response", 64 << 10}, TypeForward: {"forward", 4 << 10},
		TypeData: {"data", 64 << 10}, TypeTrailers: {"trailers", 64 << 10}, TypeAccepted: {"accepted", 1 << 10},
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

// TestFlags: flag values are wire values and never change.
func TestFlags(t *testing.T) {
	if FlagBody != 1 || FlagUpgrade != 2 || FlagGated != 4 || FlagFramed != 8 {
		t.Fatalf("flag values changed: %d %d %d %d", FlagBody, FlagUpgrade, FlagGated, FlagFramed)
	}
	r := &Request{Flags: FlagBody | FlagGated}
	if !r.Has(FlagBody) || !r.Has(FlagGated) || r.Has(FlagUpgrade) || r.Has(FlagFramed) {
		t.Errorf("Request.Has(%b)", r.Flags)
	}
	resp := &Response{Flags: FlagFramed}
	if !resp.Has(FlagFramed) || resp.Has(FlagBody) {
		t.Errorf("Response.Has(%b)", resp.Flags)
	}
}

func TestSecretsRedacted(t *testing.T) {
	h := &Hello{Version: 1, Token: "s3cret-token", Services: []string{"k"}}
	p := &PeerHello{Version: 1, InstanceID: "a", Proof: []byte("s3cret-proof")}
	for _, s := range []string{
		//lint:ignore S1025 each formatting verb is what is tested
		fmt.Sprintf("%v", h), fmt.Sprintf("%+v", h), fmt.Sprintf("%#v", h), fmt.Sprintf("%s", h),
		fmt.Sprintf("%v", p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p),
		fmt.Sprintf("%v", h.LogValue()), fmt.Sprintf("%v", p.LogValue()),
	} {
		if strings.Contains(s, "s3cret") || strings.Contains(s, "115 51 99") {
			t.Errorf("secret leaked: %s", s)
		}
	}
}

// TestReadFrameAllocations: ReadFrame allocates the header, then a payload buffer of exactly the
// payload's length, and parses in place (no copy into a string): a response head costs those two,
// the message and its header slice, small or large. Nothing is sized ahead of the header, so a
// reader waiting on an idle stream holds only the header's 8 bytes.
func TestReadFrameAllocations(t *testing.T) {
	small := AppendFrame(nil, &Response{Status: 200, ContentLength: 1024, Header: manyFields(4)})
	large := AppendFrame(nil, &Response{Status: 200, Header: manyFields(80)})
	for _, frame := range [][]byte{small, large} {
		rd := bytes.NewReader(frame)
		allocs := testing.AllocsPerRun(100, func() {
			rd.Reset(frame)
			if _, err := ReadFrame(rd); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 4 {
			t.Errorf("ReadFrame of %d bytes: %v allocations, want at most 4", len(frame), allocs)
		}
	}
}

// TestParseAllocations: parsing a head allocates the payload copy, the message and one slice
// per list, never per field (doc.go).
func TestParseAllocations(t *testing.T) {
	for _, m := range []Message{getPods(), &Response{Status: 200, Header: manyFields(20)}, &Trailers{Header: manyFields(20)}} {
		frame := AppendFrame(nil, m)
		lists := 1
		if _, ok := m.(*Request); ok {
			lists = 2 // meta and header
		}
		allocs := testing.AllocsPerRun(100, func() {
			if _, _, err := ParseFrame(frame); err != nil {
				t.Fatal(err)
			}
		})
		if want := float64(2 + lists); allocs > want {
			t.Errorf("%s: %v allocations per parse, want at most %v", m.Type(), allocs, want)
		}
	}
}

// TestFeaturesOptional: a Hello or Welcome from a peer older than feature bits (its payload ends
// after process / instance_id) parses with no features, and one with features parses them.
func TestFeaturesOptional(t *testing.T) {
	for _, m := range []Message{
		&Hello{Version: ProtocolVersion, Token: "t", Replica: "r", Process: "p", Features: FeatureControlOnStreams},
		&Welcome{Version: ProtocolVersion, AgentID: "1", ConnectionID: "c", InstanceID: "i", Features: FeatureControlOnStreams},
	} {
		full := m.AppendPayload(nil)
		old := full[:len(full)-1] // the features uvarint (1 byte here) cut: an older writer's payload
		for _, tc := range []struct {
			payload []byte
			want    uint64
		}{{full, FeatureControlOnStreams}, {old, 0}} {
			got, err := parsePayload(m.Type(), string(tc.payload))
			if err != nil {
				t.Fatalf("%s payload of %d bytes: %v", m.Type(), len(tc.payload), err)
			}
			var features uint64
			switch g := got.(type) {
			case *Hello:
				features = g.Features
			case *Welcome:
				features = g.Features
			}
			if features != tc.want {
				t.Errorf("%s payload of %d bytes: features %#x, want %#x", m.Type(), len(tc.payload), features, tc.want)
			}
		}
	}
}

// TestRequestPayloadLen: PayloadLen is the length AppendPayload writes, for every request in
// the round-trip set and at the edges of the varint lengths (FuzzParseFrame checks it for every
// request it parses).
func TestRequestPayloadLen(t *testing.T) {
	reqs := []*Request{{}, {Deadline: time.Unix(-1, 0), ContentLength: -1, Flags: 1 << 63},
		{Target: strings.Repeat("t", 127), Header: []KV{{strings.Repeat("k", 128), strings.Repeat("v", 16383)}, {"", strings.Repeat("w", 16384)}}}}
	for _, m := range sampleMessages() {
		if r, ok := m.(*Request); ok {
			reqs = append(reqs, r)
		}
	}
	for _, r := range reqs {
		if got, want := r.PayloadLen(), len(r.AppendPayload(nil)); got != want {
			t.Errorf("PayloadLen = %d, AppendPayload wrote %d bytes: %+v", got, want, r)
		}
	}
}
