package httpstream

import (
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"github.com/qkas/qkas/api"
)

// hopHeaders are hop-by-hop: they describe one connection, never the message, and are never
// carried in a head (RFC 9110 section 7.6.1). Upgrade is carried only by upgrade requests and
// 101 responses, through FlagUpgrade. Keys are canonical.
var hopHeaders = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// HeaderKVs appends h to kvs without hop-by-hop fields, the fields named by its Connection
// header, trailers set early (http.TrailerPrefix keys: they go in the trailers, and are no field
// names), and the keys in drop (canonical). With upgrade set, Upgrade is kept (and Connection:
// Upgrade is implied by FlagUpgrade). Fields with an empty name are skipped.
func HeaderKVs(kvs []api.KV, h http.Header, upgrade bool, drop ...string) []api.KV {
	var named []string // fields the Connection header names: rare
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				named = append(named, http.CanonicalHeaderKey(f))
			}
		}
	}
	for k, vs := range h {
		keep := upgrade && k == "Upgrade"
		if k == "" || !keep && (hopHeaders[k] || contains(named, k)) || contains(drop, k) || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vs {
			kvs = append(kvs, api.KV{Key: k, Value: v})
		}
	}
	return kvs
}

// dropInvalid removes from kvs the fields a peer's decoder would refuse (api.ValidField): a
// service's response may carry a field net/http's parser takes and HTTP does not allow
// ("Bad Name: 2"), which made the whole response a 502 agent_failed. net/http's server drops
// such a field when it writes a response; so does this.
func dropInvalid(kvs []api.KV) []api.KV {
	return slices.DeleteFunc(kvs, func(kv api.KV) bool { return !api.ValidField(kv.Key, kv.Value) })
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// AddKVs adds kvs to h. Keys are canonicalised; hop-by-hop fields a peer should not have sent
// are dropped again here, so nothing below this layer ever sees them, except Trailer, which a
// framed response's head carries on to the client (ResponseWriter.appendHead).
func AddKVs(h http.Header, kvs []api.KV, upgrade bool) {
	// The values of new keys are cut from one slice (capacity-limited, so that an append
	// copies), as net/textproto does: one allocation instead of one per field.
	var slab []string
	named := connectionNamed(kvs)
	for _, kv := range kvs {
		k := http.CanonicalHeaderKey(kv.Key)
		if hopHeaders[k] && !(upgrade && k == "Upgrade") && k != "Trailer" {
			continue
		}
		if named != nil && contains(named, k) && !(upgrade && k == "Upgrade") {
			continue // a field the Connection field names is hop-by-hop too (RFC 9110 §7.6.1)
		}
		if vs, ok := h[k]; ok {
			h[k] = append(vs, kv.Value)
			continue
		}
		if len(slab) == 0 {
			slab = make([]string, len(kvs))
		}
		slab[0] = kv.Value
		h[k], slab = slab[:1:1], slab[1:]
	}
}

// connectionNamed returns the canonical names of the fields that kvs's Connection fields name
// (nil when there are none: the common case costs one pass and no allocation). A peer should
// not have sent them (api/SPEC.md), and a receiver drops them.
func connectionNamed(kvs []api.KV) []string {
	var named []string
	for _, kv := range kvs {
		if len(kv.Key) != len("Connection") || !strings.EqualFold(kv.Key, "Connection") {
			continue
		}
		for _, t := range strings.Split(kv.Value, ",") {
			if t = textproto.TrimString(t); t != "" {
				named = append(named, http.CanonicalHeaderKey(t))
			}
		}
	}
	return named
}

// IsUpgrade reports whether r asks for a protocol upgrade (WebSocket, SPDY): a Connection
// header with the "upgrade" token and an Upgrade header.
func IsUpgrade(r *http.Request) bool { return isUpgradeHeader(r.Header) }

func isUpgradeHeader(h http.Header) bool {
	if h.Get("Upgrade") == "" {
		return false
	}
	for _, v := range h["Connection"] {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), "upgrade") {
				return true
			}
		}
	}
	return false
}

// SetHTTP fills the HTTP part of f from r: method, target (r.URL's escaped path and query), host,
// header fields without hop-by-hop fields and drop, content length (-1 when unknown, 0 when there
// is no body) and FlagUpgrade/FlagFramed. The body itself is passed to RoundTrip.
func SetHTTP(f *api.Request, r *http.Request, drop ...string) {
	f.Method = r.Method
	if f.Method == "" {
		f.Method = http.MethodGet
	}
	f.Target = r.URL.RequestURI()
	if q := r.URL.RawQuery; q != "" {
		if tq := TargetQuery(q); tq != q { // RequestURI ends with "?" + RawQuery
			f.Target = f.Target[:len(f.Target)-len(q)] + tq
		}
	}
	f.Host = r.Host
	if f.Host == "" {
		f.Host = r.URL.Host
	}
	upgrade := IsUpgrade(r)
	f.Header = HeaderKVs(make([]api.KV, 0, len(r.Header)), r.Header, upgrade, drop...)
	switch {
	case r.Body == nil || r.Body == http.NoBody:
		f.ContentLength = 0
	case r.ContentLength > 0:
		f.ContentLength = r.ContentLength
	default:
		f.ContentLength = -1
	}
	if upgrade {
		f.Flags |= api.FlagUpgrade
	}
	if len(r.Trailer) > 0 {
		f.Flags |= api.FlagFramed
	}
}

// TargetQuery returns the raw query q as a request frame's target may carry it (api/SPEC.md:
// visible ASCII, no '#'). net/http's server accepts a query with raw bytes above 0x7e (UTF-8
// sent unencoded, as curl sends it) and with '#'; such bytes are percent-encoded here, as a
// browser would have sent them, which a service's query parser decodes to the same values. A
// query that needs nothing (the usual case) is returned as is, without allocating.
func TargetQuery(q string) string {
	i := 0
	for i < len(q) && targetByte(q[i]) {
		i++
	}
	if i == len(q) {
		return q
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, i, len(q)+16)
	copy(b, q[:i])
	for ; i < len(q); i++ {
		if c := q[i]; targetByte(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b)
}

// targetByte: a byte a frame's target carries as it is (api's validTarget).
func targetByte(c byte) bool { return c > ' ' && c < 0x7f && c != '#' }
