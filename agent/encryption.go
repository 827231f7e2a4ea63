package agent

// The agent's side of WireGuard between nodes: it publishes the node's key,
// keeps the device's peers equal to the other nodes that published theirs,
// and marks remote pods that no peer covers for the datapath's drop.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
)

// Tunnel is the node's WireGuard device as the agent uses it; package
// wireguard's Device implements it (through an adapter in
// cmd/nodemesh-agent), tests use a fake.
type Tunnel interface {
	// PublicKey is the device's public key (base64).
	PublicKey() string
	// ListenPort is the UDP port peers send to.
	ListenPort() int
	// SetPeers makes the device's peers (and their routes) exactly peers;
	// traffic to the fallback prefixes that no peer covers (or while the
	// device is down) is dropped, never routed in plaintext.
	SetPeers(peers []TunnelPeer, fallback []netip.Prefix) error
	// Status describes the device and its peers.
	Status() (*EncryptionStatus, error)
	// RotateKey makes, stores and uses a new key pair; PublicKey returns
	// the new public key from then on.
	RotateKey() error
}

// RotateKeyRequest asks the agent to rotate its node's WireGuard key.
type RotateKeyRequest struct{}

// RotateKeyResult says what the rotation did.
type RotateKeyResult struct {
	Node         string `json:"node"`
	OldPublicKey string `json:"oldPublicKey"`
	PublicKey    string `json:"publicKey"`
}

// RotateEncryptionKey implements Server: the node gets a new WireGuard key
// pair and publishes the public key. Sessions with the old key end at once
// (WireGuard expires them); each peer handshakes again as soon as it has
// read the new key (within its resync interval), and established TCP
// connections carry on after the retransmissions of that gap.
func (a *Agent) RotateEncryptionKey(context.Context) (*RotateKeyResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tunnel == nil {
		return nil, errors.New("encryption between nodes is off on this node (--encryption disabled)")
	}
	old := a.tunnel.PublicKey()
	if err := a.tunnel.RotateKey(); err != nil {
		return nil, fmt.Errorf("rotate the WireGuard key: %w", err)
	}
	a.log.Info("rotated the node's WireGuard key", "old_public_key", old, "public_key", a.tunnel.PublicKey())
	a.program() // publishes the new public key
	return &RotateKeyResult{Node: a.cfg.NodeName, OldPublicKey: old, PublicKey: a.tunnel.PublicKey()}, nil
}

// EncryptionStatusRequest asks for the node's WireGuard state.
type EncryptionStatusRequest struct{}

// EncryptionStatus is the node's WireGuard device and its peers.
type EncryptionStatus struct {
	Node       string `json:"node"`
	Enabled    bool   `json:"enabled"`
	Interface  string `json:"interface,omitempty"`
	Kind       string `json:"kind,omitempty"` // kernel or userspace
	PublicKey  string `json:"publicKey,omitempty"`
	ListenPort int    `json:"listenPort,omitempty"`
	// Endpoint is what this node published for its peers.
	Endpoint string           `json:"endpoint,omitempty"`
	Peers    []TunnelPeerInfo `json:"peers"`
	// Missing are the nodes with pods but no published key: traffic to
	// their pods is dropped (encryption-unavailable).
	Missing []string `json:"missing,omitempty"`
	Problem string   `json:"problem,omitempty"`
}

// TunnelPeerInfo is one peer as the device sees it.
type TunnelPeerInfo struct {
	Node          string    `json:"node"`
	PublicKey     string    `json:"publicKey"`
	Endpoint      string    `json:"endpoint"`
	AllowedIPs    []string  `json:"allowedIPs"`
	LastHandshake time.Time `json:"lastHandshake"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
}

// SetTunnel turns on encryption between nodes with the node's WireGuard
// device, publishing and reading keys in store. Call before Run.
func (a *Agent) SetTunnel(t Tunnel, store KeyStore) {
	a.tunnel, a.keyStore = t, store
}

// tunnelState is what the agent last gave the device.
type tunnelState struct {
	keys      map[string]TunnelKey
	peers     []TunnelPeer
	remote    []netip.Prefix // the fallback: every other node's pod CIDRs
	missing   []string
	endpoint  netip.AddrPort
	published TunnelKey
	err       error
}

// followKeys rereads the key store every interval and reprograms when a
// node's key changed, until ctx ends (standalone mode has no notification
// for another agent's file; the interval bounds how long a new node's pods
// stay unreachable).
func (a *Agent) followKeys(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		keys, err := a.keyStore.Read()
		a.mu.Lock()
		if !reflect.DeepEqual(keys, a.tun.keys) || (err == nil) != (a.tun.err == nil) {
			a.program()
		}
		a.mu.Unlock()
	}
}

// rotateEvery rotates the node's key every interval until ctx ends; a
// failed rotation is logged and retried at the next tick (the old key stays
// in use).
func (a *Agent) rotateEvery(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := a.RotateEncryptionKey(ctx); err != nil {
			a.log.Error("periodic WireGuard key rotation failed; the current key stays", "err", err)
		}
	}
}

// programTunnel publishes this node's key, sets the device's peers from
// the world and the store, and marks ipc's remote pods that no peer
// covers. a.mu is held. Without a tunnel it does nothing.
func (a *Agent) programTunnel(ipc []policy.IPCacheEntry) error {
	if a.tunnel == nil || a.world == nil {
		return nil
	}
	var errs []error
	if ep, ok := nodeEndpoint(a.world, a.cfg.NodeName, a.tunnel.ListenPort()); ok {
		k := TunnelKey{Node: a.cfg.NodeName, PublicKey: a.tunnel.PublicKey(), Endpoint: ep}
		if k != a.tun.published {
			if err := a.keyStore.Publish(k); err != nil {
				errs = append(errs, err)
			} else {
				a.tun.published, a.tun.endpoint = k, ep
				a.log.Info("published the node's WireGuard public key", "endpoint", ep, "public_key", k.PublicKey)
			}
		}
	} else {
		errs = append(errs, fmt.Errorf("node %s has no InternalIP in the world: its WireGuard endpoint cannot be published", a.cfg.NodeName))
	}
	keys, err := a.keyStore.Read()
	a.tun.keys, a.tun.err = keys, err
	if err != nil {
		errs = append(errs, err)
	}
	peers, missing, remote, err := tunnelPeers(a.world, a.cfg.NodeName, keys)
	if err != nil {
		errs = append(errs, err)
	}
	if !reflect.DeepEqual(peers, a.tun.peers) || !slices.Equal(remote, a.tun.remote) {
		if err := a.tunnel.SetPeers(peers, remote); err != nil {
			// The previous peers stay; pods no peer covers are dropped.
			errs = append(errs, fmt.Errorf("set WireGuard peers: %w", err))
			peers = a.tun.peers
		} else {
			a.tun.peers, a.tun.remote = peers, remote
			a.log.Info("WireGuard peers set", "peers", len(peers), "missing", missing)
		}
	}
	a.tun.missing = missing
	markUntunnelled(ipc, a.tun.peers)
	return errors.Join(errs...)
}

// nodeEndpoint is where peers reach a node's device: its InternalIP (else
// its first address) and port.
func nodeEndpoint(w *api.World, node string, port int) (netip.AddrPort, bool) {
	for i := range w.Nodes {
		n := &w.Nodes[i]
		if n.Metadata.Name != node {
			continue
		}
		var first netip.Addr
		for _, a := range n.Status.Addresses {
			addr, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			if a.Type == "InternalIP" {
				return netip.AddrPortFrom(addr, uint16(port)), true
			}
			if !first.IsValid() {
				first = addr
			}
		}
		if first.IsValid() {
			return netip.AddrPortFrom(first, uint16(port)), true
		}
	}
	return netip.AddrPort{}, false
}

// Encryption implements Server.
func (a *Agent) Encryption(context.Context) (*EncryptionStatus, error) {
	a.mu.Lock()
	t, tun := a.tunnel, a.tun
	a.mu.Unlock()
	if t == nil {
		return &EncryptionStatus{Node: a.cfg.NodeName, Peers: []TunnelPeerInfo{}}, nil
	}
	st, err := t.Status()
	if err != nil {
		return nil, fmt.Errorf("WireGuard device: %w", err)
	}
	st.Node, st.Enabled = a.cfg.NodeName, true
	if tun.endpoint.IsValid() {
		st.Endpoint = tun.endpoint.String()
	}
	st.Missing = tun.missing
	byKey := map[string]string{}
	for _, p := range tun.peers {
		byKey[p.PublicKey] = p.Node
	}
	for i := range st.Peers {
		if st.Peers[i].Node == "" {
			st.Peers[i].Node = byKey[st.Peers[i].PublicKey]
		}
	}
	if tun.err != nil {
		st.Problem = tun.err.Error()
	}
	if st.Peers == nil {
		st.Peers = []TunnelPeerInfo{}
	}
	return st, nil
}
