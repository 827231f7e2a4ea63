package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/nodemesh/nodemesh/api"
)

// StandaloneSource reads the world and the policies from files and
// directories, in the formats `meshctl policy check` reads, and follows
// changes to them. An invalid change is reported (Snapshot.Err) and the last
// good state stays in force: nothing is half-applied.
type StandaloneSource struct {
	WorldPaths  []string
	PolicyPaths []string
	// Resync rereads the inputs this often even without a change
	// notification (a safety net for filesystems that do not notify).
	Resync time.Duration
	Log    *slog.Logger
}

// Run implements Source.
func (s *StandaloneSource) Run(ctx context.Context, update func(Snapshot)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch inputs: %w", err)
	}
	defer w.Close()
	for _, p := range append(append([]string{}, s.WorldPaths...), s.PolicyPaths...) {
		dir := p
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			dir = filepath.Dir(p)
		}
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watch %s: %w", dir, err)
		}
	}
	resync := s.Resync
	if resync <= 0 {
		resync = 5 * time.Second
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	var last [32]byte
	gen := 0
	var good Snapshot
	read := func() {
		// Hash first, load second: a file changing in between is then read
		// again at the next event or resync.
		sum := s.inputSum()
		if sum == last {
			return
		}
		last = sum
		world, err := api.LoadWorld(s.WorldPaths...)
		var docs []api.PolicyDocument
		if err == nil {
			docs, err = s.loadPolicies()
		}
		if err != nil {
			if s.Log != nil {
				s.Log.Warn("input refused; the last good state stays in force", "err", err)
			}
			snap := good
			snap.Err = err
			update(snap)
			return
		}
		gen++
		good = Snapshot{World: world, Policies: docs, Generation: gen}
		update(good)
	}
	read()
	// Editors write files in several steps: wait for a short quiet period.
	const settle = 20 * time.Millisecond
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.Events:
			timer = time.After(settle)
		case err := <-w.Errors:
			if s.Log != nil {
				s.Log.Warn("watching inputs", "err", err)
			}
		case <-timer:
			timer = nil
			read()
		case <-ticker.C:
			read()
		}
	}
}

// inputSum hashes the names and contents of every input file.
func (s *StandaloneSource) inputSum() [32]byte {
	return api.ContentSum(append(append([]string{}, s.WorldPaths...), s.PolicyPaths...)...)
}

// loadPolicies loads the policy paths; an empty policy directory means no
// policies (everything open), not an error.
func (s *StandaloneSource) loadPolicies() ([]api.PolicyDocument, error) {
	var paths []string
	for _, p := range s.PolicyPaths {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			if files, _ := api.Files(p); len(files) == 0 {
				continue
			}
		}
		paths = append(paths, p)
	}
	if len(paths) == 0 {
		return nil, nil
	}
	return api.LoadPolicies(paths...)
}
