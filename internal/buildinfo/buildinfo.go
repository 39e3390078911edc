package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Info describes one build.
type Info struct {
	// Version: the -ldflags version ("git describe" in the Makefile), else the module version
	// (go install …@v1.2.3), else "(devel)".
	Version string
	// Revision: the -ldflags revision (the Makefile's git rev-parse HEAD), else the VCS commit
	// Go stamped into the binary ("-dirty" appended when the tree had changes), else "unknown"
	// (go run, go test, -buildvcs=false, a build outside a checkout).
	Revision string
	// GoVersion: the toolchain that built the binary.
	GoVersion string
}

// Get returns this binary's build. ldVersion and ldRevision are main.version and main.revision,
// set by the Makefile's -ldflags: "" (or version "dev") when the binary was not built by it.
func Get(ldVersion, ldRevision string) Info {
	bi, _ := debug.ReadBuildInfo()
	info := fromBuildInfo(ldVersion, bi)
	if ldRevision != "" {
		info.Revision = ldRevision
	}
	return info
}

func fromBuildInfo(ldVersion string, bi *debug.BuildInfo) Info {
	info := Info{Version: ldVersion, Revision: "unknown", GoVersion: runtime.Version()}
	if bi == nil {
		if info.Version == "" {
			info.Version = "dev"
		}
		return info
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	if info.Version == "" || info.Version == "dev" {
		switch v := bi.Main.Version; v {
		case "":
			info.Version = "(devel)"
		default:
			info.Version = v
		}
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		info.Revision = rev
		if dirty {
			info.Revision += "-dirty"
		}
	}
	return info
}

// String is the --version line: "kasd v1.2.3 (revision 0123abcd…, go1.26.8, linux/amd64)".
func (i Info) String(program string) string {
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", program, i.Version, i.Revision, i.GoVersion, runtime.GOOS, runtime.GOARCH)
}

// Register adds the gauge <namespace>_build_info{version, revision, goversion} = 1 to reg.
func Register(reg prometheus.Registerer, namespace string, i Info) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        namespace + "_build_info",
		Help:        "Always 1; the labels say which build of " + namespace + " is running.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion},
	})
	g.Set(1)
	return reg.Register(g)
}
