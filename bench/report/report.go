// Package report writes benchmark results to a JSON file that several
// benchmarks (and runs) share: a pretty-printed list of Result, merged by
// name, so each benchmark adds or replaces its own figures and leaves the
// others' alone. bench/results.json is such a file.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// EnvResults names the file benchmarks write their results to; unset means
// they only report through testing.B.
const EnvResults = "NODEMESH_BENCH_RESULTS"

// Result is one figure. Baseline names the result it is compared with (the
// same metric of the reference configuration, measured in the same run);
// Ratio is Value / BaselineValue, whatever the metric's direction. The
// three baseline fields are null for a figure with no baseline.
type Result struct {
	Name          string   `json:"name"`
	Value         float64  `json:"value"`
	Unit          string   `json:"unit"`
	Baseline      *string  `json:"baseline"`
	BaselineValue *float64 `json:"baseline_value"`
	Ratio         *float64 `json:"ratio"`
}

// New is a result without a baseline.
func New(name string, value float64, unit string) Result {
	return Result{Name: name, Value: value, Unit: unit}
}

// Against is a result compared with base (ratio = value / base.Value); a
// zero base leaves the ratio null.
func Against(name string, value float64, unit string, base Result) Result {
	r := New(name, value, unit)
	bn, bv := base.Name, base.Value
	r.Baseline, r.BaselineValue = &bn, &bv
	if bv != 0 {
		ratio := value / bv
		r.Ratio = &ratio
	}
	return r
}

var mu sync.Mutex // serialises merges within a process

// Merge adds rs to the list in path (created if missing): a result
// replaces the one of the same name in place, new names are appended in
// the order given. The file is replaced atomically.
func Merge(path string, rs []Result) error {
	mu.Lock()
	defer mu.Unlock()
	var list []Result
	switch b, err := os.ReadFile(path); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read results: %w", err)
	case len(b) > 0:
		if err := json.Unmarshal(b, &list); err != nil {
			return fmt.Errorf("read results %s: %w", path, err)
		}
	}
	index := map[string]int{}
	for i, r := range list {
		index[r.Name] = i
	}
	for _, r := range rs {
		if r.Name == "" {
			return errors.New("merge results: a result without a name")
		}
		if i, ok := index[r.Name]; ok {
			list[i] = r
			continue
		}
		index[r.Name] = len(list)
		list = append(list, r)
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), ".results-*.json")
	if err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// MergeEnv merges rs into the file $NODEMESH_BENCH_RESULTS names, if any.
func MergeEnv(rs []Result) error {
	path := os.Getenv(EnvResults)
	if path == "" {
		return nil
	}
	return Merge(path, rs)
}
