package api

import "strconv"

// decoder reads fields from a payload that has already been bounded by its
// header. It works on a string so that every string field is a substring of
// the one payload copy: parsing allocates the payload once, plus one slice
// header per list item, and a list count is checked against the bytes left
// before its slice is allocated (each item takes at least one byte).
//
// The first error sticks; later reads return zero values.
type decoder struct {
	t   FrameType
	s   string
	off int
	err *Error
}

func (d *decoder) fail(sentinel error, field, what string) {
	if d.err == nil {
		d.err = protocolError(sentinel, "%s frame: %s: %s", d.t, field, what)
	}
}

func (d *decoder) remaining() int { return len(d.s) - d.off }

// uvarint decodes a base-128 varint (the encoding/binary format). Non-minimal
// encodings are accepted; more than 64 bits is ErrMalformed.
func (d *decoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	var x uint64
	var shift uint
	for i := 0; ; i++ {
		if d.off >= len(d.s) {
			d.fail(ErrTruncated, field, "varint runs past end of payload")
			return 0
		}
		c := d.s[d.off]
		d.off++
		if i == 9 && c > 1 || i > 9 {
			d.fail(ErrMalformed, field, "varint overflows 64 bits")
			return 0
		}
		if c < 0x80 {
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
}

func (d *decoder) varint(field string) int64 {
	u := d.uvarint(field)
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder) string(field string) string {
	n := d.uvarint(field)
	if d.err != nil {
		return ""
	}
	if n > uint64(d.remaining()) {
		d.fail(ErrTruncated, field, "length exceeds payload")
		return ""
	}
	s := d.s[d.off : d.off+int(n)]
	d.off += int(n)
	return s
}

func (d *decoder) bytes(field string) []byte {
	s := d.string(field)
	if s == "" {
		return nil
	}
	return []byte(s)
}

// count reads a list length and checks that count items of at least
// minItem bytes each fit in the rest of the payload, so the caller may
// allocate count items.
func (d *decoder) count(field string, minItem int) int {
	n := d.uvarint(field)
	if d.err != nil {
		return 0
	}
	if n > uint64(d.remaining()/minItem) {
		d.fail(ErrTruncated, field, "list count exceeds payload")
		return 0
	}
	return int(n)
}

// kvs reads a list of key/value pairs. Header lists (header true) are bounded by
// MaxHeaderFields and their names and values are checked as HTTP field names and values, so
// that nothing a peer sends can split or inject a header when it is written as HTTP/1.1 again.
func (d *decoder) kvs(field string, header bool) []KV {
	n := d.count(field, 2)
	if n == 0 {
		return nil
	}
	if header && n > MaxHeaderFields {
		d.fail(ErrHeadTooLarge, field, "more than "+strconv.Itoa(MaxHeaderFields)+" fields")
		return nil
	}
	kvs := make([]KV, n)
	for i := range kvs {
		// field, not field+" name": a concatenation here would allocate twice per item.
		kvs[i] = KV{Key: d.string(field), Value: d.string(field)}
		if header && d.err == nil && (!isToken(kvs[i].Key) || !validValue(kvs[i].Value)) {
			d.fail(ErrMalformed, field, "invalid field "+strconv.Quote(kvs[i].Key))
		}
	}
	return kvs
}

func (d *decoder) code(field string) Code {
	v := d.uvarint(field)
	if v > 0xffff {
		d.fail(ErrMalformed, field, "code out of range")
		return 0
	}
	return Code(v)
}

// parsePayload decodes the payload of a frame of known type t. Fields are
// read in order; bytes after the last known field are ignored (later
// protocol versions append fields).
func parsePayload(t FrameType, p string) (Message, error) {
	d := &decoder{t: t, s: p}
	var m Message
	switch t {
	case TypeHello:
		h := &Hello{
			Version:      d.uvarint("version"),
			Token:        d.string("token"),
			AgentVersion: d.string("agent_version"),
			Replica:      d.string("replica"),
		}
		if n := d.count("services", 1); n > 0 {
			h.Services = make([]string, n)
			for i := range h.Services {
				h.Services[i] = d.string("services")
			}
		}
		h.Process = d.string("process")
		if d.err == nil && d.remaining() > 0 { // optional: appended after process
			h.Features = d.uvarint("features")
		}
		m = h
	case TypeWelcome:
		w := &Welcome{
			Version:      d.uvarint("version"),
			AgentID:      d.string("agent_id"),
			ConnectionID: d.string("connection_id"),
			InstanceID:   d.string("instance_id"),
		}
		if d.err == nil && d.remaining() > 0 { // optional: appended after instance_id
			w.Features = d.uvarint("features")
		}
		m = w
	case TypeError:
		m = &Error{
			Code:       d.code("code"),
			Message:    d.string("message"),
			RetryAfter: millisToDuration(d.uvarint("retry_after_ms")),
		}
	case TypeGoAway:
		g := &GoAway{Reason: d.string("reason")}
		if d.err == nil && d.remaining() > 0 { // optional: appended after reason
			g.Prefer = d.string("prefer")
		}
		m = g
	case TypePing:
		m = &Ping{Padding: d.bytes("padding")}
	case TypePeerHello:
		ph := &PeerHello{
			Version:    d.uvarint("version"),
			InstanceID: d.string("instance_id"),
			Proof:      d.bytes("proof"),
		}
		if d.err == nil && d.remaining() > 0 { // optional: appended after proof
			ph.FleetID = d.string("fleet_id")
		}
		m = ph
	case TypeRequest:
		r := &Request{}
		switch k := d.uvarint("kind"); {
		case d.err != nil:
		case k == uint64(KindHTTP) || k == uint64(KindGitLab):
			r.Kind = Kind(k)
		default:
			d.fail(ErrMalformed, "kind", "unknown value "+strconv.FormatUint(k, 10))
		}
		r.Service = d.string("service")
		r.RequestID = d.string("request_id")
		r.Deadline = nanosToDeadline(d.varint("deadline"))
		r.Meta = d.kvs("meta", false)
		r.Method = d.string("method")
		r.Target = d.string("target")
		r.Host = d.string("host")
		r.Header = d.kvs("header", true)
		r.ContentLength = d.varint("content_length")
		r.Flags = d.uvarint("flags")
		switch {
		case d.err != nil:
		case r.Kind == KindHTTP && r.Service == "":
			d.fail(ErrMalformed, "service", "empty in http request")
		case !isToken(r.Method):
			d.fail(ErrMalformed, "method", "not a token")
		case !validTarget(r.Target):
			d.fail(ErrMalformed, "target", "not an origin-form request target")
		case !validValue(r.Host):
			d.fail(ErrMalformed, "host", "control character")
		case r.ContentLength < -1:
			d.fail(ErrMalformed, "content_length", "negative")
		}
		m = r
	case TypeResponse:
		r := &Response{}
		st := d.uvarint("status")
		r.Header = d.kvs("header", true)
		r.ContentLength = d.varint("content_length")
		r.Flags = d.uvarint("flags")
		switch {
		case d.err != nil:
		case st < 100 || st > 999:
			d.fail(ErrMalformed, "status", "not in 100..999")
		case r.ContentLength < -1:
			d.fail(ErrMalformed, "content_length", "negative")
		}
		r.Status = int(st)
		m = r
	case TypeData:
		m = &Data{Payload: []byte(p)}
	case TypeTrailers:
		m = &Trailers{Header: d.kvs("trailers", true)}
	case TypeAccepted:
		m = &Accepted{}
	case TypeForward:
		f := &Forward{AgentID: d.string("agent_id"), Origin: d.string("origin")}
		if d.err == nil && f.AgentID == "" {
			d.fail(ErrMalformed, "agent_id", "empty")
		}
		m = f
	default:
		// Unreachable: callers check the type first.
		return nil, protocolError(ErrUnknownFrameType, "unknown frame %s", t)
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

// isToken reports whether s is a non-empty RFC 9110 token (method or field name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChar[s[i]] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// ValidField reports whether a header field may travel in a head: the decoder refuses a head
// with a field whose name is not an HTTP token or whose value holds CR, LF or NUL.
func ValidField(name, value string) bool { return isToken(name) && validValue(value) }

// validValue reports whether s may be sent as an HTTP field value: no CR, LF or NUL.
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\r' || c == '\n' || c == 0 {
			return false
		}
	}
	return true
}

// validTarget accepts "*" and origin-form targets: "/" then visible ASCII (no spaces, no
// control characters, no fragment).
func validTarget(s string) bool {
	if s == "*" {
		return true
	}
	if s == "" || s[0] != '/' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}
