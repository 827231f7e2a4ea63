package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/redirect"
)

// BPFDatapath adapts the eBPF datapath (package bpf) to Datapath.
type BPFDatapath struct {
	*bpf.Datapath
}

// ReadEvents implements Datapath.
func (d BPFDatapath) ReadEvents(ctx context.Context, fn func(FlowEvent)) error {
	return d.Datapath.ReadEvents(ctx, func(e bpf.FlowEvent) {
		fn(FlowEvent{
			Time:      e.Time,
			Src:       Peer{IP: e.Src.String(), Identity: uint32(e.SrcIdentity)},
			Dst:       Peer{IP: e.Dst.String(), Identity: uint32(e.DstIdentity)},
			SrcPort:   e.SrcPort,
			DstPort:   e.DstPort,
			Proto:     e.Proto.String(),
			Direction: e.Direction.String(),
			Verdict:   e.Verdict.String(),
			Reason:    e.Reason.String(),
		})
	})
}

// Counters implements Datapath.
func (d BPFDatapath) Counters() ([]Counter, error) {
	cs, err := d.Datapath.Counters()
	if err != nil {
		return nil, err
	}
	out := make([]Counter, 0, len(cs))
	for _, c := range cs {
		out = append(out, Counter{Direction: c.Direction.String(), Reason: c.Reason.String(), Verdict: c.Verdict.String(), Packets: c.Packets, Bytes: c.Bytes})
	}
	return out, nil
}

// MapUsage implements Datapath.
func (d BPFDatapath) MapUsage() ([]MapUsage, error) {
	ms, err := d.Datapath.MapUsage()
	if err != nil {
		return nil, err
	}
	out := make([]MapUsage, 0, len(ms))
	for _, m := range ms {
		out = append(out, MapUsage{Name: m.Name, Entries: m.Entries, MaxEntries: m.MaxEntries})
	}
	return out, nil
}

// SetupRedirect implements Datapath: the node's routes, rule and hairpin
// (package redirect), then to_proxy on the hairpin and its index in the
// datapath's config.
func (d BPFDatapath) SetupRedirect() error {
	n, err := redirect.Setup(redirect.Config{})
	if err != nil {
		return fmt.Errorf("set up the redirect to the proxy: %w", err)
	}
	for _, w := range n.Warnings {
		slog.Warn(w)
	}
	if err := d.Datapath.AttachHairpin(n.NetLink); err != nil {
		return fmt.Errorf("set up the redirect to the proxy: %w", err)
	}
	return d.Datapath.SetHairpin(n.HostIndex)
}
