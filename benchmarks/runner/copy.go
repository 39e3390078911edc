package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// CopyResults replaces dst with the files of the results directory src (REPORT.md, results.json,
// plots, kasd.pprof).
func CopyResults(src, dst string) error {
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

const (
	headlineBegin = "<!-- headline:begin -->"
	headlineEnd   = "<!-- headline:end -->"
)

// UpdateReadme replaces the text between the headline markers of the README at readme with the
// headline table of the results in dir, linking its plots through linkDir (dir as seen from the
// README, e.g. "results/latest").
func UpdateReadme(readme, dir, linkDir string) error {
	b, err := os.ReadFile(readme)
	if err != nil {
		return err
	}
	rb, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(rb, &res); err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, headlineBegin), strings.Index(s, headlineEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s … %s markers", readme, headlineBegin, headlineEnd)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%s\n\n%s preset, %s, commit `%.12s`, %d cores (%s), load average at start %s.\n\n",
		headlineBegin, res.Preset, res.Started.UTC().Format("2006-01-02 15:04 UTC"), res.Commit, res.Machine.Cores, res.Machine.CPUModel, res.Machine.LoadAvg)
	t.WriteString("| scenario | metric | qkas | baseline | ratio | target |\n|---|---|---|---|---|---|\n")
	for _, h := range res.Headline {
		fmt.Fprintf(&t, "| %s | %s | %s | %s | %s | %s |\n", h.Scenario, h.Metric, h.Qkas, h.Baseline, h.Ratio, h.Target)
	}
	skipped := make([]string, 0, len(res.Skipped))
	for k := range res.Skipped {
		skipped = append(skipped, k)
	}
	sort.Strings(skipped)
	for _, k := range skipped {
		fmt.Fprintf(&t, "\n- %s: %s", k, res.Skipped[k])
	}
	t.WriteString("\nPlots:")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".png") {
			fmt.Fprintf(&t, " [%s](%s/%s)", strings.TrimSuffix(e.Name(), ".png"), linkDir, e.Name())
		}
	}
	t.WriteString("\n\n")
	s = s[:i] + t.String() + s[j:]
	return os.WriteFile(readme, []byte(s), 0o644)
}
