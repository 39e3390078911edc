package plot

import (
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// outDir is where the figures go: PLOT_OUT to look at them, else a temporary directory.
func outDir(t *testing.T) string {
	if d := os.Getenv("PLOT_OUT"); d != "" {
		return d
	}
	return t.TempDir()
}

// TestFigures draws one figure of each kind from data shaped like a benchmark run's and checks
// each is a PNG of the documented size.
func TestFigures(t *testing.T) {
	dir := outDir(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var curves []Latencies
	for i, route := range []string{"direct", "raw-quic", "reverseproxy", "local", "forwarded"} {
		var l []time.Duration
		for range 3000 {
			l = append(l, time.Duration(math.Exp(rng.NormFloat64()*0.5+float64(i)*0.4+6.5))*time.Microsecond)
		}
		slices.Sort(l)
		curves = append(curves, Latencies{Name: route, Sorted: l})
	}
	loss := []float64{0, 1, 3}
	files := map[string]func(string) error{
		"cdf.png": func(p string) error { return CDF(p, "1 KiB GET latency CDF, concurrency 64", curves) },
		"lines.png": func(p string) error {
			return Lines(p, "Small requests while a bulk download shares the connection", "packet loss (%)", "latency (µs, log scale)", []Series{
				{Name: "qkas p99.9", X: loss, Y: []float64{4299, 4402, 6584}}, {Name: "qkas p99", X: loss, Y: []float64{2261, 2069, 4195}},
				{Name: "qkas p50", X: loss, Y: []float64{580, 597, 630}}, {Name: "qkas p99 without bulk", X: loss, Y: []float64{1774, 1757, 2046}},
				{Name: "h2-tcp p99.9", X: loss, Y: []float64{5727, 207724, 217577}}, {Name: "h2-tcp p99", X: loss, Y: []float64{2846, 2662, 211360}},
				{Name: "h2-tcp p50", X: loss, Y: []float64{235, 253, 325}}, {Name: "h2-tcp p99 without bulk", X: loss, Y: []float64{2210, 2223, 5187}},
			}, true)
		},
		"one-point.png": func(p string) error {
			return Lines(p, "kasd with idle agents", "connected agents", "RSS added (MiB)", []Series{{Name: "RSS added, MiB", X: []float64{1000}, Y: []float64{78}}}, false)
		},
		"bars.png": func(p string) error {
			return Bars(p, "Throughput, 64 MiB transfers", "MB/s", []string{"direct", "local", "forwarded", "raw-quic"},
				[]Series{{Name: "download", Y: []float64{2554, 356, 210, 632}}, {Name: "upload", Y: []float64{4579, 304, 213, 683}}})
		},
		"quantiles.png": func(p string) error {
			return Quantiles(p, "1 KiB GET latency by route, concurrency 1", "latency (µs, log scale)", []string{"p50", "p90", "p99", "p99.9"}, []Series{
				{Name: "direct", Y: []float64{20, 28, 84, 531}}, {Name: "local", Y: []float64{381, 450, 585, 900}}, {Name: "forwarded", Y: []float64{526, 700, 996, 1500}},
			})
		},
		"scatter.png": func(p string) error {
			var ok, bad Series
			ok.Name, bad.Name = "succeeded", "failed"
			for i := range 500 {
				x := float64(i)/50 - 1
				if x > 0 && x < 0.3 {
					bad.X, bad.Y = append(bad.X, x), append(bad.Y, 1000)
					continue
				}
				ok.X, ok.Y = append(ok.X, x), append(ok.Y, 0.7+rng.Float64()*0.3)
			}
			return Scatter(p, "Requests around kill -9 of the kasd holding the agent", "request start, seconds after the kill", "latency (ms, log scale)", []Series{ok, bad}, true)
		},
	}
	for name, draw := range files {
		path := filepath.Join(dir, name)
		if err := draw(path); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() < 900 || b.Dy() < 500 {
			t.Errorf("%s: %v, want at least 900×500", name, b)
		}
	}
	if err := Bars(filepath.Join(dir, "bad.png"), "", "", []string{"a"}, []Series{{Name: "x", Y: []float64{1, 2}}}); err == nil {
		t.Error("Bars with mismatched values: no error")
	}
}

// TestColorsPerPath: one path has one colour whatever the figure calls it, and distinct paths
// have distinct colours.
func TestColorsPerPath(t *testing.T) {
	same := [][]string{
		{"local", "qkas p99", "qkas p99 without bulk", "local route"},
		{"forwarded", "forwarded p50"},
		{"h2-tcp p99.9", "h2-tcp p50"},
		{"raw-quic", "raw quic-go"},
	}
	seen := map[any]string{}
	for _, names := range same {
		c := Color(names[0], 0)
		for i, n := range names {
			if Color(n, i+3) != c {
				t.Errorf("%q and %q have different colours", names[0], n)
			}
		}
		if other, dup := seen[c]; dup {
			t.Errorf("%q and %q share a colour", names[0], other)
		}
		seen[c] = names[0]
	}
	if Color("succeeded", 0) == Color("failed", 1) || Color("succeeded", 1) != Color("succeeded", 0) {
		t.Error("succeeded and failed must keep their own colours whatever their order")
	}
	if Color("direct", 0) == Color("local", 0) || Color("broker", 0) == Color("ok", 0) {
		t.Error("colour keyword matched inside a word, or direct looks like local")
	}
}

func TestTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi    float64
		minLabels int
	}{{0, 4800, 5}, {0, 3, 4}, {-1, 10, 5}, {0.5, 1.5, 4}, {1000, 1000.5, 4}} {
		var got []string
		for _, tk := range (linearTicks{}).Ticks(tc.lo, tc.hi) {
			if tk.Label != "" {
				got = append(got, tk.Label)
			}
			if tk.Value < tc.lo-1e-9 || tk.Value > tc.hi+1e-9 {
				t.Errorf("[%g, %g]: tick %g outside", tc.lo, tc.hi, tk.Value)
			}
		}
		if len(got) < tc.minLabels || len(got) > 11 {
			t.Errorf("[%g, %g]: labels %q", tc.lo, tc.hi, got)
		}
	}
	var got []string
	for _, tk := range (logTicks{}).Ticks(200, 250000) {
		if tk.Label != "" {
			got = append(got, tk.Label)
		}
	}
	if strings.Join(got, " ") != "200 500 1000 2000 5000 10k 20k 50k 100k 200k" {
		t.Errorf("log ticks %q", got)
	}
	got = got[:0]
	for _, tk := range (logTicks{}).Ticks(1, 1e6) {
		if tk.Label != "" {
			got = append(got, tk.Label)
		}
	}
	if strings.Join(got, " ") != "1 10 100 1000 10k 100k 1M" {
		t.Errorf("log ticks over six decades %q", got)
	}
}
