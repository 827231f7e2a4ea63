package agent

import (
	"sync"
	"time"

	"github.com/nodemesh/nodemesh/xds"
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
	Verdict   string    `json:"verdict"`   // forwarded, dropped, or redirected (to the proxy)
	Reason    string    `json:"reason"`
	// L7 is set on an event of the node proxy: one HTTP request (Proto
	// "HTTP"; Verdict forwarded or dropped, Reason l7-allowed, l7-denied or
	// l7-unchecked).
	L7 *L7Info `json:"l7,omitempty"`
	// MTLS is set on an event of the node proxy's mTLS listeners: one
	// connection between node proxies (Proto "TCP"; Reason one of the
	// mTLS reasons below, or a certificate's: svid-expired, ...).
	MTLS *MTLSInfo `json:"mtls,omitempty"`
}

// MTLSInfo is what the node proxy's connection log says about one mTLS
// connection.
type MTLSInfo struct {
	PeerID     string `json:"peerID,omitempty"`  // the client's SPIFFE ID (inbound) or the server's (outbound)
	LocalID    string `json:"localID,omitempty"` // the SVID the proxy presented
	TLSVersion string `json:"tlsVersion,omitempty"`
	// BytesIn and BytesOut count the client's bytes to and from the proxy.
	BytesIn  uint64        `json:"bytesIn"`
	BytesOut uint64        `json:"bytesOut"`
	Duration time.Duration `json:"durationNanos,omitempty"`
	Details  string        `json:"details,omitempty"` // the proxy's termination details, as is
}

// Reasons of mTLS connection events. A refused peer certificate has the
// reason of package certs' verification (svid-expired, svid-unknown-ca,
// svid-wrong-trust-domain, ...).
const (
	// ReasonMTLS: an mTLS connection between node proxies, peer
	// authenticated and bound to its source address.
	ReasonMTLS = "mtls"
	// ReasonMTLSPlaintext: a permissive pod accepted a plaintext client.
	ReasonMTLSPlaintext = "mtls-plaintext-accepted"
	// ReasonMTLSPlaintextRefused: a strict pod refused a plaintext client.
	ReasonMTLSPlaintextRefused = "mtls-plaintext-refused"
	// ReasonMTLSPeerNotAllowed: a valid certificate whose SPIFFE ID is
	// not the workload at the connection's source address.
	ReasonMTLSPeerNotAllowed = "mtls-peer-not-allowed"
)

// connEvent turns a proxy's connection log entry into a flow event.
func connEvent(e xds.ConnEvent) FlowEvent {
	fe := FlowEvent{
		Time: e.Time, Node: e.Node,
		Src: Peer{IP: e.Source.Addr().Unmap().String()}, Dst: Peer{IP: e.Destination.Addr().Unmap().String()},
		SrcPort: e.Source.Port(), DstPort: e.Destination.Port(), Proto: "TCP",
		Direction: "ingress", Verdict: "forwarded", Reason: ReasonMTLS,
		MTLS: &MTLSInfo{PeerID: e.PeerID, LocalID: e.LocalID, TLSVersion: e.TLSVersion,
			BytesIn: e.BytesReceived, BytesOut: e.BytesSent, Duration: e.Duration, Details: e.Details},
	}
	if e.Direction == xds.DirectionOutbound {
		fe.Direction = "egress"
	}
	plaintext := e.TLSVersion == ""
	switch {
	case e.Verdict == xds.VerdictDenied && e.Reason == xds.ReasonRBACDenied && plaintext:
		fe.Verdict, fe.Reason = "dropped", ReasonMTLSPlaintextRefused
	case e.Verdict == xds.VerdictDenied && e.Reason == xds.ReasonRBACDenied:
		fe.Verdict, fe.Reason = "dropped", ReasonMTLSPeerNotAllowed
	case e.Verdict == xds.VerdictDenied:
		fe.Verdict, fe.Reason = "dropped", e.Reason
	case e.Reason != "":
		fe.Verdict, fe.Reason = "dropped", e.Reason // the upstream failed
	case plaintext && fe.Direction == "ingress":
		fe.Reason = ReasonMTLSPlaintext
	}
	return fe
}

// L7Info is what the node proxy's access log says about one request.
type L7Info struct {
	Method    string `json:"method"`
	Path      string `json:"path"`
	Authority string `json:"authority,omitempty"`
	Protocol  string `json:"protocol,omitempty"`
	Status    int    `json:"status"` // 0: no response was sent
	// Rule is the RBAC policy that allowed the request ("" when denied:
	// no rule matched).
	Rule     string        `json:"rule,omitempty"`
	Duration time.Duration `json:"durationNanos,omitempty"`
	// PeerID is the client's SPIFFE ID when the request came over mTLS
	// between node proxies.
	PeerID string `json:"peerID,omitempty"`
}

// Reasons of L7 events.
const (
	ReasonL7Allowed = "l7-allowed"
	ReasonL7Denied  = "l7-denied"
	// ReasonL7Unchecked: the proxy answered before its RBAC filter ran.
	ReasonL7Unchecked = "l7-unchecked"
)

// l7Event turns a proxy's access log entry into a flow event.
func l7Event(e xds.L7Event) FlowEvent {
	fe := FlowEvent{
		Time: e.Time, Node: e.Node,
		Src: Peer{IP: e.Src.Addr().Unmap().String()}, Dst: Peer{IP: e.Dst.Addr().Unmap().String()},
		SrcPort: e.Src.Port(), DstPort: e.Dst.Port(), Proto: "HTTP",
		Direction: "ingress", Verdict: "forwarded", Reason: ReasonL7Allowed,
		L7: &L7Info{Method: e.Method, Path: e.Path, Authority: e.Authority, Protocol: e.Protocol,
			Status: e.Status, Rule: e.Rule, Duration: e.Duration, PeerID: e.PeerID},
	}
	if e.Direction == xds.DirectionOutbound {
		fe.Direction = "egress"
	}
	switch e.Verdict {
	case xds.VerdictDenied:
		fe.Verdict, fe.Reason = "dropped", ReasonL7Denied
	case xds.VerdictAllowed:
	default:
		// The proxy answered before its RBAC filter ran (a malformed
		// request, headers too large...): no rule decided it.
		fe.Reason = ReasonL7Unchecked
		if e.Status == 0 || e.Status >= 400 {
			fe.Verdict = "dropped"
		}
	}
	return fe
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
