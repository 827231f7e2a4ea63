package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
)

// Reason says why the datapath passed or dropped a packet. Each reason has
// one verdict (Reason.Verdict).
type Reason uint8

// Reasons, numbered as in include/datapath.h. Those that mirror a reason of
// package policy have its name.
const (
	ReasonUnknown          Reason = 0
	ReasonAllowed          Reason = 1  // allowed-by-rule
	ReasonDenied           Reason = 2  // denied-by-rule
	ReasonDefaultDeny      Reason = 3  // default-deny
	ReasonNoPolicy         Reason = 4  // no-policy
	ReasonNotIsolated      Reason = 5  // not-isolated
	ReasonLocalNode        Reason = 6  // local-node: ingress from the pod's own node
	ReasonSelf             Reason = 7  // self: a pod reaching itself
	ReasonEstablished      Reason = 8  // a further packet of a tracked connection
	ReasonReply            Reason = 9  // a reply of a tracked connection
	ReasonRelated          Reason = 10 // an ICMP error about a tracked connection
	ReasonSpoofedSource    Reason = 11 // from a pod, with a source that is not its address
	ReasonUnknownEndpoint  Reason = 12 // toward a pod veth, for an address that is not its pod's
	ReasonProxyUnavailable Reason = 13 // allowed only with L7 rules, and no proxy enforces them yet
	ReasonPolicyMissing    Reason = 14 // the endpoint has no policy map
	ReasonMalformed        Reason = 15 // truncated or invalid headers
	ReasonFragmentUnknown  Reason = 16 // a later fragment whose first fragment was not passed
	ReasonLinkControl      Reason = 17 // ARP, IPv6 neighbour discovery, MLD: always passed
	ReasonUnsupportedL3    Reason = 18 // neither IP nor ARP
	ReasonFragment         Reason = 19 // a later fragment of a passed datagram
	ReasonToProxy          Reason = 20 // handed to the node proxy's socket (L7 rules)
	ReasonProxyEnforced    Reason = 21 // the proxy's upstream connection, after its ingress L7 check
	// ReasonEncryptionUnavailable: encryption between nodes is on and the
	// destination's node has no WireGuard peer (yet): dropped, never sent
	// in plaintext.
	ReasonEncryptionUnavailable Reason = 22

	numReasons = 23
	// reasonSlots is NM_REASON_MAX: counter slots per direction.
	reasonSlots = 32
)

var reasonNames = [numReasons]string{
	"unknown",
	policy.ReasonAllowed, policy.ReasonDenied, policy.ReasonDefaultDeny, policy.ReasonNoPolicy,
	policy.ReasonNotIsolated, policy.ReasonLocalNode, policy.ReasonSelf,
	"established", "reply", "related", "spoofed-source", "unknown-endpoint", "proxy-unavailable",
	"policy-missing", "malformed", "fragment-unknown", "link-control", "unsupported-l3", "fragment",
	"to-proxy", "proxy-enforced", "encryption-unavailable",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// ParseReason returns the reason with a name.
func ParseReason(s string) (Reason, bool) {
	for i, n := range reasonNames {
		if n == s {
			return Reason(i), true
		}
	}
	return 0, false
}

// Verdict is what the datapath did with a packet.
type Verdict uint8

// Verdicts.
const (
	Forwarded  Verdict = 1
	Dropped    Verdict = 2
	Redirected Verdict = 3 // handed to the node proxy, which decides per request
)

func (v Verdict) String() string {
	switch v {
	case Forwarded:
		return "forwarded"
	case Dropped:
		return "dropped"
	case Redirected:
		return "redirected"
	}
	return "?"
}

// Verdict is the verdict that goes with a reason.
func (r Reason) Verdict() Verdict {
	switch r {
	case ReasonDenied, ReasonDefaultDeny, ReasonSpoofedSource, ReasonUnknownEndpoint, ReasonProxyUnavailable,
		ReasonPolicyMissing, ReasonMalformed, ReasonFragmentUnknown, ReasonUnsupportedL3, ReasonUnknown,
		ReasonEncryptionUnavailable:
		return Dropped
	case ReasonToProxy:
		return Redirected
	}
	return Forwarded
}

// FlowEvent is the datapath's record of a new connection (allowed or not)
// or of a dropped packet. Packets of established connections make none.
type FlowEvent struct {
	Time             time.Time
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // ICMP: SrcPort is the echo identifier, DstPort the type
	Proto            policy.Proto
	// Direction is the policy that decided: Egress in from_pod (the pod
	// sends), Ingress in to_pod (the pod receives).
	Direction   policy.Direction
	Verdict     Verdict
	Reason      Reason
	SrcIdentity identity.NumericIdentity
	DstIdentity identity.NumericIdentity
	EndpointID  uint32 // the local endpoint; 0 if the packet matched none
	Ifindex     uint32
	// Entry is 1 + the index of the deciding entry in the direction's
	// DirTable.Entries() of the table installed when the packet passed
	// (0: none decided, e.g. default deny).
	Entry        uint32
	AuthRequired bool // the allowing entry requires mutual authentication
	MTLS         bool // steered to the node proxy for mTLS
}

func (e FlowEvent) String() string {
	return fmt.Sprintf("%s %s %s:%d -> %s:%d %s %s (%s, endpoint %d, identities %v -> %v)",
		e.Time.Format(time.RFC3339Nano), e.Direction, e.Src, e.SrcPort, e.Dst, e.DstPort, e.Proto, e.Verdict, e.Reason,
		e.EndpointID, e.SrcIdentity, e.DstIdentity)
}

func (d *Datapath) decodeEvent(raw []byte) (FlowEvent, error) {
	var r datapathFlowEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &r); err != nil {
		return FlowEvent{}, fmt.Errorf("decode flow event of %d bytes: %w", len(raw), err)
	}
	return FlowEvent{
		Time:         time.Unix(0, int64(r.TimestampNs)).Add(d.monoToWall),
		Src:          addrFromKey(r.Saddr),
		Dst:          addrFromKey(r.Daddr),
		SrcPort:      r.Sport,
		DstPort:      r.Dport,
		Proto:        policy.Proto(r.Proto),
		Direction:    policy.Direction(r.Dir),
		Verdict:      Verdict(r.Verdict),
		Reason:       Reason(r.Reason),
		SrcIdentity:  identity.NumericIdentity(r.SrcIdentity),
		DstIdentity:  identity.NumericIdentity(r.DstIdentity),
		EndpointID:   r.EndpointId,
		Ifindex:      r.Ifindex,
		Entry:        r.Rule,
		AuthRequired: r.Flags&1 != 0,
		MTLS:         r.Flags&2 != 0,
	}, nil
}

// ReadEvents calls fn with every flow event until ctx ends, then returns
// nil. The events ring buffer has a single consumer: run one ReadEvents at
// a time per node. When the ring is full (fn too slow), the datapath drops
// new events, never packets.
func (d *Datapath) ReadEvents(ctx context.Context, fn func(FlowEvent)) error {
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	defer rd.Close()
	var rec ringbuf.Record
	for {
		// The programs submit events without waking the reader, so it
		// polls: at most EventPoll of delay, one wakeup per poll however
		// many connections open.
		rd.SetDeadline(time.Now().Add(EventPoll))
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read events: %w", err)
		}
		e, err := d.decodeEvent(rec.RawSample)
		if err != nil {
			return err
		}
		fn(e)
	}
}

// EventPoll is how often ReadEvents looks for new events.
const EventPoll = 50 * time.Millisecond

// Counter counts the packets of one direction and reason, over all CPUs,
// since the counters map was created.
type Counter struct {
	Direction policy.Direction
	Reason    Reason
	Verdict   Verdict
	Packets   uint64
	Bytes     uint64
}

// Counters returns the non-zero packet counters, by direction then reason.
func (d *Datapath) Counters() ([]Counter, error) {
	var out []Counter
	for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
		for r := range Reason(numReasons) {
			idx := uint32(dir)*reasonSlots + uint32(r)
			var per []datapathCounter
			if err := d.objs.Counters.Lookup(idx, &per); err != nil {
				return nil, fmt.Errorf("read counter %s/%s: %w", dir, r, err)
			}
			c := Counter{Direction: dir, Reason: r, Verdict: r.Verdict()}
			for _, v := range per {
				c.Packets += v.Packets
				c.Bytes += v.Bytes
			}
			if c.Packets > 0 {
				out = append(out, c)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Direction < out[j].Direction })
	return out, nil
}
