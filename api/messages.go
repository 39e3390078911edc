package api

import (
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Message is a frame payload. All implementations in this package use
// pointer receivers, and ReadFrame returns pointers: *Hello, *Welcome,
// *Error, *GoAway, *PeerHello, *Ping, *Request, *Response, *Forward, *Data, *Trailers,
// *Accepted.
type Message interface {
	Type() FrameType
	// AppendPayload appends the payload encoding (no header) to b.
	AppendPayload(b []byte) []byte
}

var (
	_ Message = (*Hello)(nil)
	_ Message = (*Welcome)(nil)
	_ Message = (*Error)(nil)
	_ Message = (*GoAway)(nil)
	_ Message = (*PeerHello)(nil)
	_ Message = (*Ping)(nil)
	_ Message = (*Request)(nil)
	_ Message = (*Response)(nil)
	_ Message = (*Forward)(nil)
	_ Message = (*Data)(nil)
	_ Message = (*Trailers)(nil)
	_ Message = (*Accepted)(nil)
)

// Hello is the first frame of an agent connection's control stream
// (agentd -> kasd).
type Hello struct {
	Version      uint64 // ProtocolVersion of the sender; see CheckVersion
	Token        string // agent token; secret: String and LogValue redact it
	AgentVersion string // build version of agentd, informational
	Replica      string // pod name or other replica identity
	Services     []string
	// Process is a random id of the agentd process, new at every start. A connection from the
	// same Replica with another Process means the earlier process is gone (killed and
	// restarted): kasd retires its connections at once instead of routing into them until they
	// time out. "" (an agent that does not say) retires nothing.
	Process string
	// Features are the Feature bits the agent supports (an optional field, appended: a Hello
	// that ends after Process has none).
	Features uint64
}

// Bounds of the Hello fields kasd keeps (and publishes in the registry: the replica and
// process of every connection); kasd refuses a longer one as bad_request.
const (
	MaxReplicaLen      = 253 // a DNS name (a pod name)
	MaxProcessLen      = 64  // agentd sends a base-36 uint64, at most 13 bytes
	MaxAgentVersionLen = 128 // printable too
	// MaxServices bounds hello.services: kasd keeps the list for every connection and checks
	// each request's service against it. agentd refuses to start (or to reload) with more.
	MaxServices = 256
)

// Feature bits of Hello.Features and Welcome.Features. The agent says what it supports, kasd
// answers with the bits it supports too, and a feature is in use on the connection when
// Welcome carries it. Unknown bits are ignored.
const (
	// FeatureControlOnStreams: the agent sends its connection-level messages (Ping, GoAway) on
	// bidirectional streams it opens, one frame per stream and then FIN, instead of on the
	// control stream; kasd then never reads the control stream after Welcome, which saves a
	// goroutine per idle agent connection.
	FeatureControlOnStreams uint64 = 1 << 0
)

func (*Hello) Type() FrameType { return TypeHello }

func (m *Hello) AppendPayload(b []byte) []byte {
	b = appendUvarint(b, m.Version)
	b = appendString(b, m.Token)
	b = appendString(b, m.AgentVersion)
	b = appendString(b, m.Replica)
	b = appendUvarint(b, uint64(len(m.Services)))
	for _, s := range m.Services {
		b = appendString(b, s)
	}
	b = appendString(b, m.Process)
	return appendUvarint(b, m.Features)
}

// String redacts the token so that logging a Hello never leaks it.
func (m *Hello) String() string {
	return fmt.Sprintf("Hello{Version:%d Token:%s AgentVersion:%q Replica:%q Services:%q Process:%q Features:%#x}",
		m.Version, redact(m.Token), m.AgentVersion, m.Replica, m.Services, m.Process, m.Features)
}

// GoString redacts the token too (%#v).
func (m *Hello) GoString() string { return "&api." + m.String() }

// LogValue redacts the token for log/slog.
func (m *Hello) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Uint64("version", m.Version),
		slog.String("token", redact(m.Token)),
		slog.String("agent_version", m.AgentVersion),
		slog.String("replica", m.Replica),
		slog.String("process", m.Process),
		slog.Any("services", m.Services),
		slog.Uint64("features", m.Features),
	)
}

func redact(secret string) string {
	if secret == "" {
		return `""`
	}
	return "<redacted>"
}

// Welcome is kasd's answer to Hello.
type Welcome struct {
	Version      uint64
	AgentID      string
	ConnectionID string
	InstanceID   string // kasd instance that holds the connection
	// Features are the Feature bits in use on this connection: those of the agent's Hello
	// that kasd supports (an optional field, appended: a Welcome that ends after InstanceID
	// has none).
	Features uint64
}

func (*Welcome) Type() FrameType { return TypeWelcome }

func (m *Welcome) AppendPayload(b []byte) []byte {
	b = appendUvarint(b, m.Version)
	b = appendString(b, m.AgentID)
	b = appendString(b, m.ConnectionID)
	b = appendString(b, m.InstanceID)
	return appendUvarint(b, m.Features)
}

// Type makes *Error the TypeError message: code uvarint, message string,
// retry_after_ms uvarint.
func (*Error) Type() FrameType { return TypeError }

// AppendPayload encodes Code, Message and RetryAfter (Err is not encoded).
// Message is cut at a UTF-8 boundary if needed so the frame always fits.
func (e *Error) AppendPayload(b []byte) []byte {
	ms := durationToMillis(e.RetryAfter)
	room := TypeError.MaxSize() - uvarintLen(uint64(e.Code)) - uvarintLen(ms)
	b = appendUvarint(b, uint64(e.Code))
	b = appendString(b, fitString(e.Message, room))
	b = appendUvarint(b, ms)
	return b
}

// GoAway tells the peer to open no new streams on this connection and to
// reconnect; streams in flight finish.
type GoAway struct {
	Reason string // cut at a UTF-8 boundary if it does not fit
	// Prefer, from kasd to agentd only, asks the agent to move this connection for balance
	// (kasd is not draining): the agent opens its replacement first (make before break),
	// avoiding the sending instance and preferring the instance named here, the fleet's
	// least loaded. Empty: the sender is draining. An optional field (appended; an older
	// sender's GoAway parses with an empty Prefer), at most MaxPreferLen bytes.
	Prefer string
}

// MaxPreferLen bounds GoAway.Prefer (an instance id); a longer one is not sent.
const MaxPreferLen = 253

func (*GoAway) Type() FrameType { return TypeGoAway }

func (m *GoAway) AppendPayload(b []byte) []byte {
	prefer := m.Prefer
	if len(prefer) > MaxPreferLen {
		prefer = ""
	}
	room := TypeGoAway.MaxSize() - uvarintLen(uint64(len(prefer))) - len(prefer)
	b = appendString(b, fitString(m.Reason, room))
	return appendString(b, prefer)
}

// Ping probes a silent connection on its control stream; the receiver ignores it. Its padding
// makes the packet that carries it large enough (over 42 bytes) for a restarted peer to answer
// with a QUIC stateless reset, which QUIC's own tiny keep-alive PINGs are not.
type Ping struct {
	Padding []byte
}

func (*Ping) Type() FrameType { return TypePing }

func (m *Ping) AppendPayload(b []byte) []byte {
	p := m.Padding
	if len(p) > TypePing.MaxSize()-4 {
		p = p[:TypePing.MaxSize()-4]
	}
	b = appendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// PeerHello opens a kasd <-> kasd connection.
type PeerHello struct {
	Version    uint64
	InstanceID string
	Proof      []byte // secret-derived: String and LogValue redact it
	// FleetID is the sender's fleet (appended field: a payload that ends after Proof, from a
	// kasd older than fleet ids, parses with FleetID ""; receivers refuse it).
	FleetID string
}

func (*PeerHello) Type() FrameType { return TypePeerHello }

func (m *PeerHello) AppendPayload(b []byte) []byte {
	b = appendUvarint(b, m.Version)
	b = appendString(b, m.InstanceID)
	b = appendUvarint(b, uint64(len(m.Proof)))
	b = append(b, m.Proof...)
	// Always written (fields appended later must follow it); only readers treat it as optional.
	b = appendString(b, m.FleetID)
	return b
}

// String redacts the proof.
func (m *PeerHello) String() string {
	return fmt.Sprintf("PeerHello{Version:%d InstanceID:%q Proof:<%d bytes> FleetID:%q}", m.Version, m.InstanceID, len(m.Proof), m.FleetID)
}

// GoString redacts the proof too (%#v).
func (m *PeerHello) GoString() string { return "&api." + m.String() }

// LogValue redacts the proof for log/slog.
func (m *PeerHello) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Uint64("version", m.Version),
		slog.String("instance_id", m.InstanceID),
		slog.Int("proof_bytes", len(m.Proof)),
		slog.String("fleet_id", m.FleetID),
	)
}

// Kind says what a Request stream carries.
type Kind uint8

const (
	KindHTTP   Kind = 1 // kasd -> agent: proxy HTTP to Service
	KindGitLab Kind = 2 // agent -> kasd: GitLab modules request
)

func (k Kind) String() string {
	switch k {
	case KindHTTP:
		return "http"
	case KindGitLab:
		return "gitlab"
	}
	return "kind_" + strconv.Itoa(int(k))
}

// KV is one Request metadata entry. Keys may repeat.
type KV struct{ Key, Value string }

// Request flags: what follows the head on the stream.
const (
	// FlagBody: body bytes follow the head. Without it the sender finishes its send side (FIN)
	// right after the head, or, with FlagUpgrade, keeps it open for the upgraded protocol.
	FlagBody uint64 = 1 << 0
	// FlagUpgrade: the request asks for a protocol upgrade (Connection: Upgrade). After a 101
	// response the stream carries raw bytes both ways until each side's FIN.
	FlagUpgrade uint64 = 1 << 1
	// FlagGated (requests): the sender keeps the body beyond its replay buffer until the
	// receiver answers Accepted (or refuses), so that a refused request can be retried
	// elsewhere with its body unread. The agent sends Accepted once it has checked the head.
	FlagGated uint64 = 1 << 2
	// FlagFramed: the body is a sequence of data frames ended by one trailers frame (used when
	// the message has trailers); without it the body is raw stream bytes ended by FIN.
	FlagFramed uint64 = 1 << 3
)

// Request is the head of a request stream: who it is for (kind, service), the request's id,
// deadline and authenticated metadata, then its HTTP head. The body (if FlagBody) follows as
// raw stream bytes, or as data and trailers frames with FlagFramed.
type Request struct {
	Kind      Kind
	Service   string // required (non-empty) for KindHTTP
	RequestID string
	// Deadline of the whole request; zero = none. Encoded as varint unix
	// nanoseconds with 0 = none, so times are clamped to the int64
	// nanosecond range (years 1678..2262) and the Unix epoch itself is sent
	// as 1ns before it (still in the past, never "no deadline").
	Deadline time.Time
	Meta     []KV

	Method string // HTTP method, an RFC 9110 token
	// Target is the request target in origin form: the escaped path, starting with "/", and
	// "?query" if any ("*" for OPTIONS *). No spaces or control characters.
	Target string
	Host   string
	Header []KV // header fields in order; names are tokens, values have no CR, LF or NUL
	// ContentLength of the body: -1 unknown (the body ends with FIN), 0 none.
	ContentLength int64
	Flags         uint64
}

func (*Request) Type() FrameType { return TypeRequest }

func (m *Request) AppendPayload(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Kind))
	b = appendString(b, m.Service)
	b = appendString(b, m.RequestID)
	b = appendVarint(b, deadlineToNanos(m.Deadline))
	b = appendKVs(b, m.Meta)
	b = appendString(b, m.Method)
	b = appendString(b, m.Target)
	b = appendString(b, m.Host)
	b = appendKVs(b, m.Header)
	b = appendVarint(b, m.ContentLength)
	b = appendUvarint(b, m.Flags)
	return b
}

// PayloadLen is len(m.AppendPayload(nil)), computed without encoding: a sender checks a head
// against MaxHeadSize before it opens a stream for it.
func (m *Request) PayloadLen() int {
	return uvarintLen(uint64(m.Kind)) + stringLen(m.Service) + stringLen(m.RequestID) +
		varintLen(deadlineToNanos(m.Deadline)) + kvsLen(m.Meta) + stringLen(m.Method) +
		stringLen(m.Target) + stringLen(m.Host) + kvsLen(m.Header) + varintLen(m.ContentLength) +
		uvarintLen(m.Flags)
}

// Has reports whether flag is set.
func (m *Request) Has(flag uint64) bool { return m.Flags&flag != 0 }

// MetaValue returns the first value of key.
func (m *Request) MetaValue(key string) (string, bool) {
	for _, kv := range m.Meta {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// MetaValues returns all values of key, in order (nil if none).
func (m *Request) MetaValues(key string) []string {
	var vs []string
	for _, kv := range m.Meta {
		if kv.Key == key {
			vs = append(vs, kv.Value)
		}
	}
	return vs
}

// Response is the head of the response on a request stream. Interim (1xx) responses other than
// 101 may precede the final one, at most MaxInformational of them. The body follows as for a
// Request. A stream that cannot be served is answered with an Error frame instead.
type Response struct {
	Status int  // 100..999
	Header []KV // as Request.Header
	// ContentLength of the body: -1 unknown (the body ends with FIN).
	ContentLength int64
	Flags         uint64 // FlagFramed
}

func (*Response) Type() FrameType { return TypeResponse }

func (m *Response) AppendPayload(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Status))
	b = appendKVs(b, m.Header)
	b = appendVarint(b, m.ContentLength)
	b = appendUvarint(b, m.Flags)
	return b
}

// Has reports whether flag is set.
func (m *Response) Has(flag uint64) bool { return m.Flags&flag != 0 }

// Data is one chunk of a framed body (FlagFramed).
type Data struct{ Payload []byte }

func (*Data) Type() FrameType { return TypeData }

func (m *Data) AppendPayload(b []byte) []byte { return append(b, m.Payload...) }

// Trailers ends a framed body; the stream's FIN follows.
type Trailers struct{ Header []KV }

func (*Trailers) Type() FrameType { return TypeTrailers }

func (m *Trailers) AppendPayload(b []byte) []byte { return appendKVs(b, m.Header) }

// Accepted tells the sender of a FlagGated request that the receiver checked its head and reads
// the body now: a refusal can no longer come.
type Accepted struct{}

func (*Accepted) Type() FrameType { return TypeAccepted }

func (*Accepted) AppendPayload(b []byte) []byte { return b }

// Forward is the first frame on a kasd -> kasd peer stream; a Request frame and its body
// follow, exactly as the agent will receive them.
type Forward struct {
	AgentID string // required (non-empty)
	Origin  string // instance id of the sending kasd
}

func (*Forward) Type() FrameType { return TypeForward }

func (m *Forward) AppendPayload(b []byte) []byte {
	b = appendString(b, m.AgentID)
	b = appendString(b, m.Origin)
	return b
}

// --- encoding helpers ---

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendVarint(b []byte, v int64) []byte {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return appendUvarint(b, u)
}

func appendKVs(b []byte, kvs []KV) []byte {
	b = appendUvarint(b, uint64(len(kvs)))
	for _, kv := range kvs {
		b = appendString(b, kv.Key)
		b = appendString(b, kv.Value)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = appendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func stringLen(s string) int { return uvarintLen(uint64(len(s))) + len(s) }

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

func kvsLen(kvs []KV) int {
	n := uvarintLen(uint64(len(kvs)))
	for _, kv := range kvs {
		n += stringLen(kv.Key) + stringLen(kv.Value)
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// fitString returns s, or its longest prefix ending on a UTF-8 boundary
// whose encoding (length prefix + bytes) fits in room bytes.
func fitString(s string, room int) string {
	if uvarintLen(uint64(len(s)))+len(s) <= room {
		return s
	}
	if room <= 1 {
		return ""
	}
	n := min(room-uvarintLen(uint64(room)), len(s))
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

var (
	minDeadline = time.Unix(0, math.MinInt64)
	maxDeadline = time.Unix(0, math.MaxInt64)
)

func deadlineToNanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Before(minDeadline):
		return math.MinInt64
	case t.After(maxDeadline):
		return math.MaxInt64
	}
	n := t.UnixNano()
	if n == 0 {
		n = -1 // 0 means "no deadline"; keep an epoch deadline in the past
	}
	return n
}

func nanosToDeadline(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

const maxRetryMillis = uint64(math.MaxInt64 / int64(time.Millisecond))

func durationToMillis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++ // round up: a hint of 1ns is not "none"
	}
	return uint64(ms)
}

func millisToDuration(ms uint64) time.Duration {
	return time.Duration(min(ms, maxRetryMillis)) * time.Millisecond
}
