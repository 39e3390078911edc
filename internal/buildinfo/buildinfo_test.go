package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFromBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v1.4.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		name      string
		ld        string
		bi        *debug.BuildInfo
		version   string
		revision  string
		goversion string
	}{
		{"ldflags win", "v2.0.0-3-gdeadbee", stamped, "v2.0.0-3-gdeadbee", "abc123-dirty", "go1.99.1"},
		{"module version when ldflags say dev", "dev", stamped, "v1.4.0", "abc123-dirty", "go1.99.1"},
		{"module version when ldflags empty", "", stamped, "v1.4.0", "abc123-dirty", "go1.99.1"},
		{"devel, no vcs", "dev", &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "(devel)"}}, "(devel)", "unknown", "go1.99.1"},
		{"clean tree", "v1", &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "f00"}, {Key: "vcs.modified", Value: "false"}}}, "v1", "f00", ""},
		{"no build info", "", nil, "dev", "unknown", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.ld, tc.bi)
			if got.Version != tc.version || got.Revision != tc.revision {
				t.Errorf("got %+v, want version %q revision %q", got, tc.version, tc.revision)
			}
			if tc.goversion != "" && got.GoVersion != tc.goversion {
				t.Errorf("goversion %q, want %q", got.GoVersion, tc.goversion)
			}
			if got.GoVersion == "" {
				t.Error("empty goversion")
			}
		})
	}
}

func TestGetLdflagsRevision(t *testing.T) {
	if got := Get("v1", "0123abc"); got.Version != "v1" || got.Revision != "0123abc" {
		t.Fatalf("%+v", got)
	}
	if got := Get("", ""); got.Version == "" || got.Revision == "" || got.GoVersion == "" {
		t.Fatalf("%+v: every field must say something", got)
	}
}

func TestString(t *testing.T) {
	s := Info{Version: "v1", Revision: "abc", GoVersion: "go1.99"}.String("kasd")
	if !strings.HasPrefix(s, "kasd v1 (revision abc, go1.99, ") {
		t.Fatalf("%q", s)
	}
}

func TestRegister(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := Register(reg, "kasd", Info{Version: "v1", Revision: "abc", GoVersion: "go1.99"}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "kasd_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v", mfs)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if m.GetGauge().GetValue() != 1 || labels["version"] != "v1" || labels["revision"] != "abc" || labels["goversion"] != "go1.99" {
		t.Fatalf("metric %v", m)
	}
	if err := Register(reg, "kasd", Info{Version: "v1", Revision: "abc", GoVersion: "go1.99"}); err == nil {
		t.Fatal("registered twice")
	}
}
