package certs

import (
	"context"
	"sort"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Snapshot is an identity source's state at one moment: the SVIDs it holds,
// one per SPIFFE ID, and the trust bundle. It is immutable.
type Snapshot struct {
	// Generation increases with every change of the source.
	Generation uint64
	// Bundle is nil until the source has one.
	Bundle *Bundle
	svids  map[spiffeid.ID]*SVID
}

// NewSnapshot returns a snapshot of svids and bundle. Of several SVIDs with
// one ID the first is kept.
func NewSnapshot(generation uint64, bundle *Bundle, svids ...*SVID) *Snapshot {
	s := &Snapshot{Generation: generation, Bundle: bundle, svids: make(map[spiffeid.ID]*SVID, len(svids))}
	for _, v := range svids {
		if _, dup := s.svids[v.ID()]; !dup {
			s.svids[v.ID()] = v
		}
	}
	return s
}

// SVID returns the current SVID of id.
func (s *Snapshot) SVID(id spiffeid.ID) (*SVID, bool) {
	if s == nil {
		return nil, false
	}
	v, ok := s.svids[id]
	return v, ok
}

// SVIDs returns every SVID, sorted by SPIFFE ID.
func (s *Snapshot) SVIDs() []*SVID {
	if s == nil {
		return nil
	}
	out := make([]*SVID, 0, len(s.svids))
	for _, v := range s.svids {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID().String() < out[j].ID().String() })
	return out
}

// Len returns the number of SVIDs.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.svids)
}

// Feed hands the latest Snapshot of a source to its watchers; the Manager
// and the SPIRE source publish through one. The zero value is ready.
type Feed struct {
	mu      sync.Mutex
	cur     *Snapshot
	changed chan struct{} // closed and replaced on Publish
}

// Publish makes a snapshot of bundle and svids the current one, with the
// next generation, and wakes the watchers.
func (f *Feed) Publish(bundle *Bundle, svids []*SVID) *Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := NewSnapshot(f.cur.generation()+1, bundle, svids...)
	f.cur = s
	if f.changed != nil {
		close(f.changed)
	}
	f.changed = make(chan struct{})
	return s
}

func (s *Snapshot) generation() uint64 {
	if s == nil {
		return 0
	}
	return s.Generation
}

// Snapshot returns the current snapshot: empty, with a nil bundle, before
// the first Publish.
func (f *Feed) Snapshot() *Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == nil {
		return NewSnapshot(0, nil)
	}
	return f.cur
}

// Watch calls fn with the current snapshot, once one has a bundle, and
// then with every newer one, until ctx ends; then it returns nil. Calls are
// sequential; while fn runs, newer snapshots replace each other, so a slow
// fn skips intermediate ones but always gets the latest.
func (f *Feed) Watch(ctx context.Context, fn func(*Snapshot)) error {
	var last uint64
	for {
		f.mu.Lock()
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		cur, changed := f.cur, f.changed
		f.mu.Unlock()
		if cur != nil && cur.Bundle != nil && cur.Generation != last {
			fn(cur)
			last = cur.Generation
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
