package agenttest

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
)

// Datapath records what the agent programs.
type Datapath struct {
	mu         sync.Mutex
	Calls      []string // "SetPolicy 3", "SyncIPCache", "SetEndpoint 10.0.1.10", ... in order
	Policies   map[uint32]*policy.Table
	ProxyPorts map[uint32]bpf.ProxyPorts // the proxy ports of each policy's last SetPolicy
	EPs        map[netip.Addr]uint32
	Idents     map[netip.Addr]identity.NumericIdentity
	EPFlags    map[netip.Addr]bpf.EndpointFlags // mTLS flags of each endpoint's last SetEndpoint
	MTLSPorts  [2]uint16                        // inbound, outbound of the last SetMTLSPorts
	IPCache    []policy.IPCacheEntry
	Attached   map[string]bool
	EventsIn   chan agent.FlowEvent
	FailAttach map[string]error
}

// NewDatapath returns an empty fake.
func NewDatapath() *Datapath {
	return &Datapath{Policies: map[uint32]*policy.Table{}, ProxyPorts: map[uint32]bpf.ProxyPorts{}, EPs: map[netip.Addr]uint32{}, Idents: map[netip.Addr]identity.NumericIdentity{}, EPFlags: map[netip.Addr]bpf.EndpointFlags{},
		Attached: map[string]bool{}, EventsIn: make(chan agent.FlowEvent, 16), FailAttach: map[string]error{}}
}

func (d *Datapath) call(format string, args ...any) {
	d.Calls = append(d.Calls, fmt.Sprintf(format, args...))
}

// TakeCalls returns the calls so far and forgets them.
func (d *Datapath) TakeCalls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.Calls
	d.Calls = nil
	return c
}

func (d *Datapath) Attach(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("Attach %s", ifname)
	if err := d.FailAttach[ifname]; err != nil {
		return err
	}
	d.Attached[ifname] = true
	return nil
}

func (d *Datapath) Detach(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("Detach %s", ifname)
	delete(d.Attached, ifname)
	return nil
}

func (d *Datapath) SetEndpoint(addr netip.Addr, id, ifindex uint32, ident identity.NumericIdentity, flags bpf.EndpointFlags) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("SetEndpoint %s", addr)
	d.EPs[addr], d.Idents[addr], d.EPFlags[addr] = id, ident, flags
	return nil
}

// SetMTLSPorts implements agent.Datapath.
func (d *Datapath) SetMTLSPorts(in, out uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("SetMTLSPorts %d %d", in, out)
	d.MTLSPorts = [2]uint16{in, out}
	return nil
}

// MTLSPortsNow returns the mTLS ports last set.
func (d *Datapath) MTLSPortsNow() [2]uint16 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.MTLSPorts
}

// IPCacheNow returns the ipcache last synced.
func (d *Datapath) IPCacheNow() []policy.IPCacheEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.IPCache
}

// Flags returns the mTLS flags last set for the endpoint at addr.
func (d *Datapath) Flags(addr netip.Addr) bpf.EndpointFlags {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.EPFlags[addr]
}

func (d *Datapath) DeleteEndpoint(addr netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("DeleteEndpoint %s", addr)
	delete(d.EPs, addr)
	return nil
}

func (d *Datapath) SetPolicy(id uint32, t *policy.Table, proxy bpf.ProxyPorts) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("SetPolicy %d", id)
	d.Policies[id] = t
	d.ProxyPorts[id] = proxy
	return nil
}

// SetupRedirect implements agent.Datapath: nothing to set up.
func (d *Datapath) SetupRedirect() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("SetupRedirect")
	return nil
}

func (d *Datapath) DeletePolicy(id uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("DeletePolicy %d", id)
	delete(d.Policies, id)
	return nil
}

func (d *Datapath) SyncIPCache(es []policy.IPCacheEntry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.call("SyncIPCache")
	d.IPCache = es
	return nil
}

func (d *Datapath) ReadEvents(ctx context.Context, fn func(agent.FlowEvent)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-d.EventsIn:
			fn(e)
		}
	}
}

func (d *Datapath) Counters() ([]agent.Counter, error) {
	return []agent.Counter{{Direction: "ingress", Verdict: "dropped", Reason: "default-deny", Packets: 3, Bytes: 180}}, nil
}

func (d *Datapath) MapUsage() ([]agent.MapUsage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return []agent.MapUsage{{Name: "endpoints", Entries: len(d.EPs), MaxEntries: 65536}}, nil
}

func (d *Datapath) Endpoints() (map[netip.Addr]uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[netip.Addr]uint32{}
	for a, id := range d.EPs {
		out[a] = id
	}
	return out, nil
}

// Links maps addresses to interface names it is told about.
type Links struct {
	mu    sync.Mutex
	ByIP  map[netip.Addr]string
	Index map[string]int
}

// NewLinks returns a fake with no interfaces.
func NewLinks() *Links { return &Links{ByIP: map[netip.Addr]string{}, Index: map[string]int{}} }

// Add makes addr route to a new interface name.
func (l *Links) Add(addr netip.Addr, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ByIP[addr] = name
	l.Index[name] = 100 + len(l.Index)
}

func (l *Links) InterfaceFor(addr netip.Addr) (string, int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.ByIP[addr]
	if !ok {
		return "", 0, fmt.Errorf("no route to %s", addr)
	}
	return n, l.Index[n], nil
}

func (l *Links) Watch(ctx context.Context, fn func(string)) error {
	<-ctx.Done()
	return nil
}

// ProxyPortsOf returns the proxy ports of the last SetPolicy of the endpoint
// at addr.
func (d *Datapath) ProxyPortsOf(addr netip.Addr) bpf.ProxyPorts {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ProxyPorts[d.EPs[addr]]
}

// Tunnel is a WireGuard device that records its peers.
type Tunnel struct {
	mu       sync.Mutex
	Key      string
	Port     int
	peers    []agent.TunnelPeer
	Fallback []netip.Prefix
	Sets     int // SetPeers calls
}

// PublicKey implements agent.Tunnel.
func (t *Tunnel) PublicKey() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.Key
}

// ListenPort implements agent.Tunnel.
func (t *Tunnel) ListenPort() int { return t.Port }

// SetPeers implements agent.Tunnel.
func (t *Tunnel) SetPeers(ps []agent.TunnelPeer, fallback []netip.Prefix) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.peers, t.Sets = append([]agent.TunnelPeer(nil), ps...), t.Sets+1
	t.Fallback = append([]netip.Prefix(nil), fallback...)
	return nil
}

// RotateKey implements agent.Tunnel: the key gets a "-rotated" suffix.
func (t *Tunnel) RotateKey() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Key += "-rotated"
	return nil
}

// Peers returns the peers last set.
func (t *Tunnel) Peers() []agent.TunnelPeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]agent.TunnelPeer(nil), t.peers...)
}

// Status implements agent.Tunnel.
func (t *Tunnel) Status() (*agent.EncryptionStatus, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := &agent.EncryptionStatus{Interface: "fake-wg", Kind: "fake", PublicKey: t.Key, ListenPort: t.Port}
	for _, p := range t.peers {
		info := agent.TunnelPeerInfo{PublicKey: p.PublicKey, Endpoint: p.Endpoint.String()}
		for _, c := range p.AllowedIPs {
			info.AllowedIPs = append(info.AllowedIPs, c.String())
		}
		st.Peers = append(st.Peers, info)
	}
	return st, nil
}
