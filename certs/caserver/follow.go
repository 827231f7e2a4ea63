package caserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/nodemesh/nodemesh/api"
)

// FollowWorld reads the world from paths (files or directories, as
// api.LoadWorld reads them), applies it with SetWorld, and follows changes
// until ctx ends, then returns nil. It rereads on change notifications and
// every resync (5s if not positive). An invalid world is refused and
// logged, and the last good one stays in force; if the first read fails,
// no node has a socket until a read succeeds. It returns an error only if
// the paths cannot be watched.
//
// It does what the agent's StandaloneSource does for the world alone, so
// that the CA does not link the agent and its eBPF datapath.
func (s *Server) FollowWorld(ctx context.Context, paths []string, resync time.Duration) error {
	if len(paths) == 0 {
		return fmt.Errorf("ca server: no world paths")
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("ca server: watch the world: %w", err)
	}
	defer w.Close()
	for _, p := range paths {
		dir := p
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			dir = filepath.Dir(p)
		}
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("ca server: watch %s: %w", dir, err)
		}
	}
	if resync <= 0 {
		resync = 5 * time.Second
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	var last [32]byte
	gen, good := 0, false
	read := func() {
		// Hash first, load second: a file changing in between is read
		// again at the next event or resync.
		sum := api.ContentSum(paths...)
		if sum == last {
			return
		}
		last = sum
		world, err := api.LoadWorld(paths...)
		if err != nil {
			if good {
				s.log.Warn("world refused; the last good world stays in force", "err", err)
			} else {
				s.log.Error("no valid world yet: no node has a socket", "err", err)
			}
			return
		}
		gen++
		good = true
		_ = s.SetWorld(world) // SetNodes logs its problems
		s.log.Info("world loaded", "generation", gen, "nodes", len(s.Nodes()), "pods", len(world.Pods))
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
			s.log.Warn("watching the world", "err", err)
		case <-timer:
			timer = nil
			read()
		case <-ticker.C:
			read()
		}
	}
}
