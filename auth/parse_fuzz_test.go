package auth

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
)

func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{
		"Bearer " + mint(f, testKey, validClaims()), "Bearer abc", "bearer abc", "BEARER  abc  ", "Basic abc", "Bearer",
		"Bearer ", "Bearer a b", "Bearer a\tb", "Bearer " + strings.Repeat("a", MaxTokenBytes+1), "", " Bearer x", "Bearer\tx",
	} {
		f.Add(s, false)
	}
	f.Add("Bearer x", true)
	f.Fuzz(func(t *testing.T, value string, twice bool) {
		r := &http.Request{Header: http.Header{"Authorization": {value}}}
		if twice {
			r.Header["Authorization"] = append(r.Header["Authorization"], value)
		}
		tok, err := BearerToken(r)
		if err != nil {
			if tok != "" {
				t.Fatalf("%q: token %q with error %v", value, tok, err)
			}
			if len(value) >= 16 && strings.Contains(err.Error(), value) {
				t.Fatalf("error %q quotes the header", err)
			}
			return
		}
		if twice {
			t.Fatalf("two Authorization headers accepted")
		}
		if tok == "" || len(tok) > MaxTokenBytes || strings.ContainsAny(tok, " \t") || !strings.Contains(value, tok) {
			t.Fatalf("%q: token %q", value, tok)
		}
		// The writer's form carries the same token.
		again, err := BearerToken(&http.Request{Header: http.Header{"Authorization": {"Bearer " + tok}}})
		if err != nil || again != tok {
			t.Fatalf("Bearer %q: %q, %v", tok, again, err)
		}
	})
}

func FuzzDecodeSecret(f *testing.F) {
	f.Add([]byte(NewSecret()))
	f.Add([]byte(NewSecret() + "\n"))
	f.Add([]byte(base64.RawURLEncoding.EncodeToString(randomBytes(48))))
	f.Add([]byte(base64.StdEncoding.EncodeToString(randomBytes(31))))
	f.Add([]byte(" \t\n"))
	f.Add([]byte("a+b-" + NewSecret()))
	f.Add([]byte(NewSecret() + "==="))
	f.Add([]byte("!!!!" + NewSecret()))
	f.Fuzz(func(t *testing.T, data []byte) {
		secret, err := decodeSecret(data)
		if err != nil {
			if len(data) >= 24 && strings.Contains(err.Error(), string(data)) {
				t.Fatalf("error %q quotes the content", err)
			}
			return
		}
		if len(secret) < MinSecretBytes {
			t.Fatalf("%q: %d bytes accepted", data, len(secret))
		}
		// The writer's form (kasctl secret) of the same bytes decodes to them.
		again, err := decodeSecret([]byte(base64.StdEncoding.EncodeToString(secret) + "\n"))
		if err != nil || !bytes.Equal(again, secret) {
			t.Fatalf("re-encoded secret: %v", err)
		}
	})
}

// FuzzSecretEncodings: every encoding ReadSecretFile promises to read (standard or URL
// alphabet, padded or not, wrapped at any width) decodes to the bytes written.
func FuzzSecretEncodings(f *testing.F) {
	f.Add(randomBytes(32), uint8(0), uint8(0))
	f.Add(randomBytes(64), uint8(3), uint8(76))
	f.Add(randomBytes(31), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, raw []byte, enc, width uint8) {
		encs := []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding}
		s := encs[int(enc)%len(encs)].EncodeToString(raw)
		if width > 0 {
			var b strings.Builder
			for i := 0; i < len(s); i += int(width) {
				b.WriteString(s[i:min(i+int(width), len(s))])
				b.WriteString("\r\n")
			}
			s = b.String()
		}
		got, err := decodeSecret([]byte(s))
		if len(raw) < MinSecretBytes {
			if err == nil {
				t.Fatalf("%d bytes accepted", len(raw))
			}
			return
		}
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("%q: %v", s, err)
		}
	})
}
