package report_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/bench/report"
)

func TestMerge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.json")
	base := report.New("x/none/rps", 100, "req/s")
	if err := report.Merge(path, []report.Result{base, report.Against("x/ebpf/rps", 95, "req/s", base)}); err != nil {
		t.Fatal(err)
	}
	// A second benchmark adds its figures; a rerun replaces in place.
	if err := report.Merge(path, []report.Result{report.New("y/p99", 12, "ms")}); err != nil {
		t.Fatal(err)
	}
	if err := report.Merge(path, []report.Result{report.Against("x/ebpf/rps", 90, "req/s", base)}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0]["name"] != "x/none/rps" || got[1]["name"] != "x/ebpf/rps" || got[2]["name"] != "y/p99" {
		t.Fatalf("merged list: %s", b)
	}
	if got[1]["value"] != 90.0 || got[1]["baseline"] != "x/none/rps" || got[1]["baseline_value"] != 100.0 || got[1]["ratio"] != 0.9 {
		t.Errorf("compared result: %v", got[1])
	}
	for _, k := range []string{"baseline", "baseline_value", "ratio"} {
		if v, ok := got[2][k]; !ok || v != nil {
			t.Errorf("result without baseline: %s = %v, want null", k, v)
		}
	}
	if !strings.HasPrefix(string(b), "[\n  {\n    \"name\"") || !strings.HasSuffix(string(b), "]\n") {
		t.Errorf("not pretty-printed: %s", b)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := report.Merge(path, []report.Result{base}); err == nil {
		t.Error("merging into a corrupt file succeeded")
	}
}

func TestMergeEnv(t *testing.T) {
	t.Setenv(report.EnvResults, "")
	if err := report.MergeEnv([]report.Result{report.New("a", 1, "x")}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "r.json")
	t.Setenv(report.EnvResults, path)
	if err := report.MergeEnv([]report.Result{report.New("a", 1, "x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
