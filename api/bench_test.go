package api

import (
	"bytes"
	"testing"
)

// benchResponse is the response head that answers getPods.
func benchResponse() *Response {
	return &Response{Status: 200, ContentLength: 3412, Header: []KV{
		{"Audit-Id", "6b1c6c3e-3f43-4a5e-a1f6-9d1d1b8d7f7a"},
		{"Cache-Control", "no-cache, private"},
		{"Content-Type", "application/json"},
		{"Date", "Tue, 01 Oct 2024 12:00:00 GMT"},
		{"X-Kubernetes-Pf-Flowschema-Uid", "a8c2a3c1-1f0b-4c55-8b1a-3c0c1f9e2d11"},
		{"X-Kubernetes-Pf-Prioritylevel-Uid", "e1c2d3b4-5a6f-4b7c-8d9e-0f1a2b3c4d5e"},
	}}
}

func BenchmarkAppendRequest(b *testing.B) {
	r := getPods()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendFrame(buf[:0], r)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkWriteRequest(b *testing.B) {
	r := getPods()
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
	frame := AppendFrame(nil, getPods())
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
	frame := AppendFrame(nil, getPods())
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParseFrame(frame); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteResponse(b *testing.B) {
	r := benchResponse()
	var w bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		w.Reset()
		if err := WriteFrame(&w, r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadResponse(b *testing.B) {
	frame := AppendFrame(nil, benchResponse())
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
