package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteReports redraws the committed reference run: REPORT.md is one page that starts with
// the headline ratios, DETAILS.md has every table, the summary plots are drawn.
func TestWriteReports(t *testing.T) {
	ref, err := filepath.Glob(filepath.Join("..", "results", "reference-*", "results.json"))
	if err != nil || len(ref) == 0 {
		t.Fatalf("no committed reference run: %v", err)
	}
	dir := t.TempDir()
	b, err := os.ReadFile(ref[len(ref)-1])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteReports(dir); err != nil {
		t.Fatal(err)
	}
	report, err := os.ReadFile(filepath.Join(dir, ReportFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(report), "\n")
	if len(lines) > 60 {
		t.Errorf("REPORT.md has %d lines, want one page (≤ 60)", len(lines))
	}
	head := strings.Index(string(report), "## Headline")
	if head < 0 || head > 800 || !strings.Contains(string(report), "| **") {
		t.Errorf("REPORT.md does not open with the headline ratios:\n%s", report)
	}
	for _, want := range []string{"local route", "forwarded route", "raw quic-go", "HTTP/2 over 1 TCP", DetailsFile, "latency-quantiles-c1.png", "throughput.png"} {
		if !strings.Contains(string(report), want) {
			t.Errorf("REPORT.md lacks %q", want)
		}
	}
	if strings.Contains(string(report), "(reference") {
		t.Errorf("REPORT.md repeats the reference systems' own rows; they belong in DETAILS.md")
	}
	details, err := os.ReadFile(filepath.Join(dir, DetailsFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Every headline figure", "## 1. Latency", "## 2. Throughput", "## 3. Head-of-line", "## 4. Scale", "## 5. Failover", "## Caveats", "(reference"} {
		if !strings.Contains(string(details), want) {
			t.Errorf("DETAILS.md lacks %q", want)
		}
	}
	for _, f := range []string{"latency-quantiles-c1.png", "latency-quantiles-c64.png"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("summary plot %s: %v", f, err)
		}
	}
}
