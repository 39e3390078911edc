// Package api is the qkas wire protocol: the frames exchanged on QUIC
// streams between agentd and kasd (ALPN "qkas-agent/2") and between kasd
// instances (ALPN "qkas-peer/2"), the error codes, the one code -> HTTP
// status table, and the JSON body of HTTP error responses.
//
// The byte layout is documented in SPEC.md. In short, a frame is
//
//	type u8 | length u24 big-endian | payload (length bytes)
//
// and a payload is a fixed sequence of fields (uvarints, varints,
// length-prefixed strings, counted lists). Bytes after the last field a
// version knows are ignored, so new fields are appended, never inserted.
//
// # Invariants
//
//   - Standard library only: every other package may import api.
//   - Sizes are checked before allocating. A frame's declared length is
//     checked against its type's MaxSize (at most MaxFrameSize) from the
//     4-byte header alone; an unknown type is never parsed (ReadFrame
//     discards its payload, at most MaxFrameSize, so the stream stays in step). Parsing then copies the checked payload once into a string
//     (every string field is a substring of that copy; ReadFrame also needs
//     one read buffer of the same size) plus one slice element per list
//     item, and a list count is checked against the payload bytes left before
//     its slice is allocated. A peer therefore cannot make a parser allocate
//     more than a small constant times the declared-and-checked size, which
//     is itself at most MaxFrameSize (64 KiB).
//   - A TypeError frame parses to an *Error, which is a Message: ReadFrame
//     returns it as (msg, nil); ReadExpect turns it into the error result.
//   - Parsers never panic, whatever the input (see the fuzz tests), and
//     report failures as *Error with CodeProtocol (or CodeUnsupportedVersion)
//     wrapping a sentinel (ErrFrameTooLarge, ErrUnknownFrameType,
//     ErrTruncated, ErrMalformed, ErrHeadTooLarge, ErrUnexpectedFrame), so
//     callers can both errors.Is the cause and CodeOf the error.
//   - A parsed Request, Response or Trailers frame is safe to write as
//     HTTP/1.1: method and header names are tokens, header values and host
//     hold no CR, LF or NUL, the target is "*" or origin-form, and a head has
//     at most MaxHeaderFields fields. Writers do not check these rules; the
//     receiver's parser does.
//   - ReadFrame consumes exactly one frame: the header, then exactly the
//     declared payload. The body bytes that follow a Request or Response
//     frame on the same stream are left in the reader.
//   - WriteFrame issues exactly one Write per frame.
//   - Every parsed frame re-encodes to bytes that parse to an equal message.
//   - Versions are parsed, not judged: Hello, Welcome and PeerHello carry any
//     version; callers decide with CheckVersion.
//
// # Errors
//
// Code is the single error vocabulary: frames, HTTP bodies and metric labels
// use the same snake_case names. Code.HTTPStatus is the only code -> status
// table in qkas. *Error is the typed error used everywhere; it is also the
// Error frame. CodeOf classifies any error. WriteHTTPError and ReadHTTPError
// are the two halves of the HTTP error contract.
//
// Nothing in this package starts goroutines or holds state beyond a
// sync.Pool of write buffers; all functions are safe for concurrent use
// (each Message value belongs to its caller).
package api
