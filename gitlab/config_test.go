package gitlab_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/gitlab"
)

func TestConfigDefaults(t *testing.T) {
	c := gitlab.Config{}.WithDefaults()
	if c.Version != "dev" || c.Timeout != 10*time.Second || c.RateLimit != 100 || c.Burst != 200 ||
		c.PositiveCacheTTL != 5*time.Minute || c.NegativeCacheTTL != time.Minute || c.Now == nil {
		t.Errorf("defaults %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	secret := testSecret
	for name, tc := range map[string]struct {
		cfg     gitlab.Config
		wantErr string
	}{
		"ok":           {gitlab.Config{URL: "https://gitlab.example.com/", AuthSecret: secret}, ""},
		"ok path":      {gitlab.Config{URL: "http://gitlab.example.com/gitlab", AuthSecret: secret}, ""},
		"no url":       {gitlab.Config{AuthSecret: secret}, "URL is required"},
		"bad scheme":   {gitlab.Config{URL: "ftp://x", AuthSecret: secret}, "scheme"},
		"no host":      {gitlab.Config{URL: "https://", AuthSecret: secret}, "no host"},
		"query":        {gitlab.Config{URL: "https://x/?a=b", AuthSecret: secret}, "query"},
		"short secret": {gitlab.Config{URL: "https://x", AuthSecret: secret[:31]}, "31 bytes"},
		"negative":     {gitlab.Config{URL: "https://x", AuthSecret: secret, Timeout: -1}, "Timeout"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.cfg.WithDefaults().Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Validate() = %v, want %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), string(secret)) {
				t.Errorf("error contains the secret")
			}
		})
	}
}

func TestNewCAFileAndRegistry(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a certificate"), 0o600)
	if _, err := gitlab.New(gitlab.Config{URL: "https://x", AuthSecret: testSecret, CAFile: bad}, nil); err == nil {
		t.Error("New accepted a CA file without certificates")
	}
	if _, err := gitlab.New(gitlab.Config{URL: "https://x", AuthSecret: testSecret, CAFile: filepath.Join(dir, "missing")}, nil); err == nil {
		t.Error("New accepted a missing CA file")
	}
	reg := prometheus.NewRegistry()
	c, err := gitlab.New(gitlab.Config{URL: "https://x", AuthSecret: testSecret}, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := gitlab.New(gitlab.Config{URL: "https://x", AuthSecret: testSecret}, reg); err == nil {
		t.Error("second Client on one registry: want an error")
	}
}
