package api

import (
	"bytes"
	"testing"
	"time"
)

func benchRequest() *Request {
	return &Request{
		Kind:      KindHTTP,
		Service:   "kubernetes",
		RequestID: "01J9Z8W3K4X5Y6Z7A8B9C0D1E2",
		Deadline:  time.Now().Add(30 * time.Second),
		Meta: []KV{
			{"impersonate-user", "alice@example.com"},
			{"impersonate-group", "developers"},
			{"impersonate-group", "oncall"},
		},
	}
}

func BenchmarkAppendRequest(b *testing.B) {
	r := benchRequest()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendFrame(buf[:0], r)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkWriteRequest(b *testing.B) {
	r := benchRequest()
	var w bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		w.Reset()
		if err := WriteFrame(&w, r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadRequest(b *testing.B) {
	frame := AppendFrame(nil, benchRequest())
	rd := bytes.NewReader(frame)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(frame)
		if _, err := ReadFrame(rd); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseRequest(b *testing.B) {
	frame := AppendFrame(nil, benchRequest())
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParseFrame(frame); err != nil {
			b.Fatal(err)
		}
	}
}
