package agent

import (
	"sync"
	"time"
)

// FlowEvent is one connection decision of the datapath.
type FlowEvent struct {
	Time      time.Time `json:"time"`
	Node      string    `json:"node"`
	Src       Peer      `json:"src"`
	Dst       Peer      `json:"dst"`
	SrcPort   uint16    `json:"srcPort"`
	DstPort   uint16    `json:"dstPort"`
	Proto     string    `json:"protocol"`
	Direction string    `json:"direction"` // egress (from the pod) or ingress (to the pod)
	Verdict   string    `json:"verdict"`   // forwarded or dropped
	Reason    string    `json:"reason"`
}

// Peer is one side of a flow event.
type Peer struct {
	IP        string `json:"ip"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Identity  uint32 `json:"identity"`
}

// Counter is a datapath packet counter.
type Counter struct {
	Direction string `json:"direction"`
	Reason    string `json:"reason"`
	Verdict   string `json:"verdict"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// MapUsage is how full a datapath map is.
type MapUsage struct {
	Name       string `json:"name"`
	Entries    int    `json:"entries"`
	MaxEntries int    `json:"maxEntries"`
}

// eventRing keeps the last events and fans new ones out to followers.
type eventRing struct {
	mu   sync.Mutex
	buf  []FlowEvent
	next int
	full bool
	subs map[chan FlowEvent]struct{}
}

func newEventRing(size int) *eventRing {
	return &eventRing{buf: make([]FlowEvent, size), subs: map[chan FlowEvent]struct{}{}}
}

func (r *eventRing) add(e FlowEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
	r.full = r.full || r.next == 0
	for ch := range r.subs {
		select {
		case ch <- e:
		default: // a slow follower misses events rather than stalling the agent
		}
	}
}

// last returns up to n of the most recent events, oldest first.
func (r *eventRing) last(n int) []FlowEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []FlowEvent
	if r.full {
		all = append(all, r.buf[r.next:]...)
	}
	all = append(all, r.buf[:r.next]...)
	if n >= 0 && len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

func (r *eventRing) subscribe() (chan FlowEvent, func()) {
	ch := make(chan FlowEvent, 1024)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		delete(r.subs, ch)
		r.mu.Unlock()
	}
}
