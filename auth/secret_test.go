package auth

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSecretFile(t *testing.T) {
	raw := make([]byte, 48)
	for i := range raw {
		raw[i] = byte(0xf0 + i) // high bytes so std and URL encodings differ (+/ vs -_)
	}
	std := base64.StdEncoding.EncodeToString(raw)
	url := base64.URLEncoding.EncodeToString(raw)
	if std == url {
		t.Fatal("test secret does not exercise both alphabets")
	}
	raw32 := raw[:32] // 32 bytes: 43 base64 characters + 1 padding
	std32 := base64.StdEncoding.EncodeToString(raw32)

	tests := []struct {
		name    string
		content string
		want    []byte
		wantErr string // substring
	}{
		{name: "std padded", content: std32, want: raw32},
		{name: "std unpadded", content: strings.TrimRight(std32, "="), want: raw32},
		{name: "std trailing newline", content: std + "\n", want: raw},
		{name: "whitespace around and inside", content: "  " + std[:20] + "\r\n" + std[20:] + "\t\n", want: raw},
		{name: "url padded", content: base64.URLEncoding.EncodeToString(raw32), want: raw32},
		{name: "url unpadded", content: base64.RawURLEncoding.EncodeToString(raw) + "\n", want: raw},
		{name: "gitlab style", content: gitlabSecretFile(raw32), want: raw32},
		{name: "short", content: base64.StdEncoding.EncodeToString(raw[:16]), wantErr: "decodes to 16 bytes, need at least 32"},
		{name: "31 bytes", content: base64.StdEncoding.EncodeToString(raw[:31]), wantErr: "decodes to 31 bytes"},
		{name: "empty", content: "", wantErr: "is empty"},
		{name: "only whitespace", content: " \n\n", wantErr: "is empty"},
		{name: "not base64", content: "this is not base64 at all!!" + strings.Repeat("x", 40), wantErr: "is not base64"},
		{name: "hex is valid base64 but check length", content: strings.Repeat("ab", 16), wantErr: "decodes to 24 bytes"},
		{name: "mixed alphabets", content: "+" + strings.Repeat("A", 42) + "_", wantErr: "mixes the standard"},
		{name: "too much padding", content: std32 + "==", wantErr: "too much '=' padding"},
		{name: "bad length", content: strings.Repeat("A", 45), wantErr: "is not base64"},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "secret"+string(rune('a'+i)))
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadSecretFile(path)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ReadSecretFile() = %x, want error containing %q", got, tt.wantErr)
				}
				msg := err.Error()
				if !strings.Contains(msg, tt.wantErr) || !strings.Contains(msg, path) {
					t.Fatalf("error %q: want it to contain %q and the path", msg, tt.wantErr)
				}
				if c := strings.TrimSpace(tt.content); len(c) > 8 && strings.Contains(msg, c[:8]) {
					t.Fatalf("error %q quotes the file content", msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadSecretFile: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("ReadSecretFile() = %x, want %x", got, tt.want)
			}
		})
	}
}

// gitlabSecretFile is a secret file holding raw as GitLab writes
// .gitlab_kas_secret: std base64, padded, trailing newline.
func gitlabSecretFile(raw []byte) string { return base64.StdEncoding.EncodeToString(raw) + "\n" }

func TestReadSecretFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	_, err := ReadSecretFile(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("err = %v, want it to name %s and say it does not exist", err, path)
	}
}

func TestReadSecretFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, bytes.Repeat([]byte("A"), MaxSecretFileBytes+4), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecretFile(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want too large", err)
	}
}

func TestNewSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	a, b := NewSecret(), NewSecret()
	if a == b {
		t.Fatal("NewSecret returned the same secret twice")
	}
	raw, err := base64.StdEncoding.DecodeString(a)
	if err != nil || len(raw) != 32 {
		t.Fatalf("NewSecret() = %q: want std base64 of 32 bytes (err %v)", a, err)
	}
	if err := os.WriteFile(path, []byte(a+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSecretFile(path)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("ReadSecretFile(NewSecret()) = %x, %v; want %x", got, err, raw)
	}
}
