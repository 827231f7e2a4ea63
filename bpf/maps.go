package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
)

// addrKey is an address as the maps hold it: 16 bytes, IPv4 as
// ::ffff:a.b.c.d.
func addrKey(a netip.Addr) [16]byte { return a.As16() }

func addrFromKey(b [16]byte) netip.Addr { return netip.AddrFrom16(b).Unmap() }

// EndpointFlags are a local pod's mTLS mode in the datapath
// (include/datapath.h NM_EP_*).
type EndpointFlags uint32

const (
	// EndpointMTLSOriginate: the pod's allowed TCP connections to mesh pods
	// on other nodes go through the node proxy, which originates mTLS.
	EndpointMTLSOriginate EndpointFlags = 0x01
	// EndpointMTLSAccept: TCP connections from mesh pods on other nodes go
	// through the node proxy, which terminates mTLS (and, in permissive
	// mode, also takes plaintext).
	EndpointMTLSAccept EndpointFlags = 0x02
)

// SetEndpoint adds or updates a local pod address: its endpoint (whose
// policy map is SetPolicy's endpointID), the index of the host side of its
// veth, its identity and its mTLS flags. Packets from a pod must carry one
// of its addresses as source and arrive on its veth, or they are dropped.
func (d *Datapath) SetEndpoint(addr netip.Addr, endpointID, ifindex uint32, id identity.NumericIdentity, flags EndpointFlags) error {
	if !addr.IsValid() {
		return errors.New("set endpoint: invalid address")
	}
	k := datapathEndpointKey{Addr: addrKey(addr)}
	v := datapathEndpointInfo{EndpointId: endpointID, Ifindex: ifindex, Identity: uint32(id), Flags: uint32(flags)}
	if err := d.objs.Endpoints.Put(&k, &v); err != nil {
		return fmt.Errorf("set endpoint %s: %w", addr, err)
	}
	return nil
}

// DeleteEndpoint removes a local pod address. Removing an absent one is not
// an error.
func (d *Datapath) DeleteEndpoint(addr netip.Addr) error {
	k := datapathEndpointKey{Addr: addrKey(addr)}
	if err := d.objs.Endpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", addr, err)
	}
	return nil
}

// Endpoints returns the endpoint entries in the datapath (address →
// endpoint ID), so that a restarted agent keeps the IDs its predecessor
// gave.
func (d *Datapath) Endpoints() (map[netip.Addr]uint32, error) {
	out := map[netip.Addr]uint32{}
	var k datapathEndpointKey
	var v datapathEndpointInfo
	it := d.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out[addrFromKey(k.Addr)] = v.EndpointId
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// SetPolicy installs the compiled policy of an endpoint, both directions.
// The swap is atomic: a new inner map is built and filled (then frozen, so
// nothing can change it while it is live), and only then replaces the
// endpoint's slot in the outer map. A packet being decided holds either the
// old map or the new one, never a half-written table. The outer map holds
// the only reference to an inner map: the old one is freed once the last
// packet using it is done. Redirect entries send connections to the proxy
// listeners of proxy (see ProxyPorts).
func (d *Datapath) SetPolicy(endpointID uint32, t *policy.Table, proxy ProxyPorts) error {
	if t == nil {
		return fmt.Errorf("set policy of endpoint %d: nil table", endpointID)
	}
	kvs := policyEntries(t, proxy)
	spec := d.innerSpec.Copy()
	spec.Name = fmt.Sprintf("nm_pol_%d", endpointID)
	spec.MaxEntries = uint32(len(kvs))
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("set policy of endpoint %d: create map of %d entries: %w", endpointID, len(kvs), err)
	}
	defer inner.Close()
	if err := fillPolicyMap(inner, kvs); err != nil {
		return fmt.Errorf("set policy of endpoint %d: %w", endpointID, err)
	}
	if err := inner.Freeze(); err != nil {
		return fmt.Errorf("set policy of endpoint %d: freeze: %w", endpointID, err)
	}
	if err := d.objs.Policy.Put(endpointID, inner); err != nil {
		return fmt.Errorf("set policy of endpoint %d: swap: %w", endpointID, err)
	}
	return nil
}

// fillPolicyMap writes the elements of a new policy map, in batches where
// the kernel supports them for LPM tries.
func fillPolicyMap(m *ebpf.Map, kvs []policyKV) error {
	keys := make([]datapathPolicyKey, len(kvs))
	vals := make([]datapathPolicyEntry, len(kvs))
	for i := range kvs {
		keys[i], vals[i] = kvs[i].Key, kvs[i].Value
	}
	n, err := m.BatchUpdate(keys, vals, nil) // a fresh map: nothing to overwrite
	if err == nil && n == len(kvs) {
		return nil
	}
	if err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("write %d elements: %w", len(kvs), err)
	}
	for i := n; i < len(kvs); i++ {
		if err := m.Update(&keys[i], &vals[i], ebpf.UpdateNoExist); err != nil {
			return fmt.Errorf("element %+v: %w", keys[i], err)
		}
	}
	return nil
}

// DeletePolicy removes an endpoint's policy; packets of an endpoint without
// one are dropped (policy-missing). Removing an absent one is not an error.
func (d *Datapath) DeletePolicy(endpointID uint32) error {
	if err := d.objs.Policy.Delete(endpointID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete policy of endpoint %d: %w", endpointID, err)
	}
	return nil
}

// ipcacheKey is the LPM key of a prefix; IPv4 prefixes are mapped into
// ::ffff:0:0/96.
func ipcacheKey(p netip.Prefix) datapathIpcacheKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return datapathIpcacheKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

func prefixFromKey(k datapathIpcacheKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	if a.Is4In6() && k.Prefixlen >= 96 {
		return netip.PrefixFrom(a.Unmap(), int(k.Prefixlen)-96)
	}
	return netip.PrefixFrom(a, int(k.Prefixlen))
}

// SyncIPCache makes the ipcache hold exactly entries (policy.Engine.IPCache
// of this node): entries are added or updated first, then stale ones
// deleted, so an address never resolves to nothing while it is being
// replaced.
func (d *Datapath) SyncIPCache(entries []policy.IPCacheEntry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := make(map[datapathIpcacheKey]bool, len(entries))
	for _, e := range entries {
		if !e.Prefix.IsValid() {
			return fmt.Errorf("sync ipcache: invalid prefix in entry %+v", e)
		}
		k := ipcacheKey(e.Prefix)
		v := datapathIpcacheValue{Identity: uint32(e.Identity), PrefixId: e.PrefixID}
		if e.RemotePod {
			v.Flags |= ipcRemotePod
		}
		if e.MTLSPeer {
			v.Flags |= ipcMTLSPeer
		}
		if e.NoTunnel {
			v.Flags |= ipcNoTunnel
		}
		if err := d.objs.Ipcache.Put(&k, &v); err != nil {
			return fmt.Errorf("sync ipcache: set %s: %w", e.Prefix, err)
		}
		want[k] = true
	}
	var stale []datapathIpcacheKey
	var k datapathIpcacheKey
	var v datapathIpcacheValue
	it := d.objs.Ipcache.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("sync ipcache: list: %w", err)
	}
	for _, k := range stale {
		if err := d.objs.Ipcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("sync ipcache: delete %s: %w", prefixFromKey(k), err)
		}
	}
	return nil
}

// MapUsage is how full one of the datapath's maps is.
type MapUsage struct {
	Name       string
	Entries    int
	MaxEntries int
}

// MapUsage reports the entries of every map that fills up: endpoints,
// ipcache, policy (endpoints with a policy map), policy-entries (the
// elements of all policy maps, against their summed sizes), conntrack
// (including entries that timed out but were not yet reused) and fragments.
func (d *Datapath) MapUsage() ([]MapUsage, error) {
	var out []MapUsage
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{
		{"endpoints", d.objs.Endpoints},
		{"ipcache", d.objs.Ipcache},
		{"policy", d.objs.Policy},
	} {
		n, err := countKeys(m.m)
		if err != nil {
			return nil, fmt.Errorf("map usage of %s: %w", m.name, err)
		}
		out = append(out, MapUsage{m.name, n, int(m.m.MaxEntries())})
	}
	inner := MapUsage{Name: "policy-entries"}
	var id uint32
	var im *ebpf.Map
	it := d.objs.Policy.Iterate()
	for it.Next(&id, &im) {
		n, err := countKeys(im)
		if err != nil {
			im.Close()
			return nil, fmt.Errorf("map usage of the policy map of endpoint %d: %w", id, err)
		}
		inner.Entries += n
		inner.MaxEntries += int(im.MaxEntries())
		im.Close()
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map usage of policy maps: %w", err)
	}
	out = append(out, inner)
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{
		{"conntrack", d.objs.Conntrack},
		{"fragments", d.objs.Fragments},
	} {
		n, err := countKeys(m.m)
		if err != nil {
			return nil, fmt.Errorf("map usage of %s: %w", m.name, err)
		}
		out = append(out, MapUsage{m.name, n, int(m.m.MaxEntries())})
	}
	return out, nil
}

// countKeys walks a map's keys. Entries added or removed meanwhile may or
// may not be counted.
func countKeys(m *ebpf.Map) (int, error) {
	n := 0
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var cur any // nil: the first key
	for {
		err := m.NextKey(cur, next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		if n > int(m.MaxEntries())*2+16 {
			return n, errors.New("map changes too fast to count")
		}
		copy(key, next)
		cur = key
	}
}

// SetHairpin names the interface to_pod sends what must reach the node proxy
// to (package redirect's nm_host; its peer runs to_proxy, see
// AttachHairpin). Zero removes it: ingress L7 connections are then dropped
// as proxy-unavailable.
func (d *Datapath) SetHairpin(ifindex int) error {
	return d.updateConfig(func(c *datapathNmConfig) { c.HairpinIfindex = uint32(ifindex) })
}

// SetMTLSPorts names the proxy listeners that mTLS flows go to (inbound:
// from mesh pods on other nodes, outbound: to them); zero makes them drop as
// proxy-unavailable (the proxy has not ACKed the configuration and secrets
// serving them).
func (d *Datapath) SetMTLSPorts(inbound, outbound uint16) error {
	return d.updateConfig(func(c *datapathNmConfig) { c.MtlsInPort, c.MtlsOutPort = inbound, outbound })
}

func (d *Datapath) updateConfig(f func(*datapathNmConfig)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c datapathNmConfig
	if err := d.objs.Config.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read the datapath's config: %w", err)
	}
	f(&c)
	if err := d.objs.Config.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write the datapath's config: %w", err)
	}
	return nil
}
