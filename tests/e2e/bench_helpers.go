package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nodemesh/nodemesh/agent"
)

// ChangeTiming says when one input change reached each agent.
type ChangeTiming struct {
	// Written is the moment just before the input file was written.
	Written time.Time
	// Programmed is, per node, when the agent finished programming the
	// generation that holds the change: its Status.LastLoad plus
	// Status.Reconcile. The agent runs on this machine, so its clock is
	// ours; this is exact whatever the polling interval.
	Programmed map[string]time.Time
	// Seen is, per node, when polling the agent's API first showed the new
	// generation (later than Programmed by up to one poll and one call).
	Seen map[string]time.Time
	// Generation is, per node, the generation that holds the change.
	Generation map[string]int
}

// Latency is how long after the write the last node had the change
// programmed.
func (c ChangeTiming) Latency() time.Duration { return latest(c.Programmed).Sub(c.Written) }

// SeenLatency is how long after the write polling saw it on every node.
func (c ChangeTiming) SeenLatency() time.Duration { return latest(c.Seen).Sub(c.Written) }

func latest(m map[string]time.Time) time.Time {
	var t time.Time
	for _, v := range m {
		if v.After(t) {
			t = v
		}
	}
	return t
}

// Watcher times input changes with one API connection per agent, kept
// open, so that polling costs one call rather than a dial.
type Watcher struct {
	h       *Harness
	clients map[string]*agent.Client
}

// Watch connects to every agent's API. Close the Watcher when done.
func (h *Harness) Watch() (*Watcher, error) {
	w := &Watcher{h: h, clients: map[string]*agent.Client{}}
	for _, n := range h.C.Nodes() {
		c, err := agent.Dial(h.Socket(n.Name))
		if err != nil {
			w.Close()
			return nil, err
		}
		w.clients[n.Name] = c
	}
	return w, nil
}

// Close closes the API connections.
func (w *Watcher) Close() {
	for _, c := range w.clients {
		c.Close()
	}
}

// SetPolicies is Harness.SetPolicies, timed: it writes every policy as
// one file and polls every agent each poll interval until it reports the
// new generation.
func (w *Watcher) SetPolicies(ctx context.Context, yaml string, poll time.Duration) (ChangeTiming, error) {
	return w.set(ctx, filepath.Join(w.h.Dir, "policies", "policies.yaml"), []byte(yaml), poll)
}

// SetWorld is Harness.SetWorld, timed like SetPolicies.
func (w *Watcher) SetWorld(ctx context.Context, yaml []byte, poll time.Duration) (ChangeTiming, error) {
	return w.set(ctx, filepath.Join(w.h.Dir, "world.yaml"), yaml, poll)
}

func (w *Watcher) set(ctx context.Context, path string, data []byte, poll time.Duration) (ChangeTiming, error) {
	ct := ChangeTiming{Programmed: map[string]time.Time{}, Seen: map[string]time.Time{}, Generation: map[string]int{}}
	gens := map[string]int{}
	for node, c := range w.clients {
		st, err := c.Status(ctx)
		if err != nil {
			return ct, fmt.Errorf("agent on %s: %w", node, err)
		}
		gens[node] = st.Generation
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ct.Written = time.Now()
	if err := writeAtomic(path, data); err != nil {
		return ct, err
	}
	for len(ct.Seen) < len(w.clients) {
		for node, c := range w.clients {
			if _, done := ct.Seen[node]; done {
				continue
			}
			st, err := c.Status(ctx)
			now := time.Now()
			if err != nil {
				return ct, fmt.Errorf("agent on %s: %w", node, err)
			}
			if st.LastError != "" {
				return ct, fmt.Errorf("agent on %s refused %s: %s", node, filepath.Base(path), st.LastError)
			}
			if st.Generation > gens[node] {
				ct.Seen[node] = now
				ct.Programmed[node] = st.LastLoad.Add(st.Reconcile)
				ct.Generation[node] = st.Generation
			}
		}
		if len(ct.Seen) == len(w.clients) {
			break
		}
		w.h.mu.Lock()
		var exited []string
		for node := range w.clients {
			if p := w.h.agents[node]; p == nil {
				exited = append(exited, node)
			} else {
				select {
				case <-p.Done():
					exited = append(exited, node)
				default:
				}
			}
		}
		w.h.mu.Unlock()
		if len(exited) > 0 {
			return ct, fmt.Errorf("agents not running on %v", exited)
		}
		select {
		case <-ctx.Done():
			return ct, errors.Join(fmt.Errorf("waiting for the agents to load %s", filepath.Base(path)), ctx.Err())
		case <-time.After(poll):
		}
	}
	return ct, nil
}
