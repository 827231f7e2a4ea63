package agent

// Encryption between nodes (issue 6): each agent publishes its node's
// WireGuard public key and endpoint, reads the other nodes', and derives
// the device's peers — a peer per node with a published key, whose allowed
// IPs are that node's pod CIDRs — and which remote pods have no peer yet
// (the datapath drops traffic to them: encryption-unavailable).
//
// In standalone mode keys are published in a directory every agent can
// read (KeyStore); Kubernetes mode will use an annotation of the Node
// object (issue 7).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
)

// TunnelKey is what a node publishes about its WireGuard device: never
// the private key.
type TunnelKey struct {
	Node      string         `json:"node"`
	PublicKey string         `json:"publicKey"` // base64, as wg(8) prints it
	Endpoint  netip.AddrPort `json:"endpoint"`  // where peers send to
}

// TunnelPeer is one peer of the node's WireGuard device.
type TunnelPeer struct {
	Node       string
	PublicKey  string
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix // the node's pod CIDRs
}

// KeyStore is the standalone mode's place where nodes publish their
// TunnelKeys: a directory shared by the agents, one file per node
// (<node>.json, public, written atomically).
type KeyStore struct{ Dir string }

// Publish writes k as k.Node's entry.
func (s KeyStore) Publish(k TunnelKey) error {
	if !validNodeName(k.Node) {
		return fmt.Errorf("publish tunnel key: node name %q cannot name a file", k.Node)
	}
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("publish tunnel key: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, "."+k.Node+".*")
	if err != nil {
		return fmt.Errorf("publish tunnel key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("publish tunnel key: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("publish tunnel key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("publish tunnel key: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.Dir, k.Node+".json")); err != nil {
		return fmt.Errorf("publish tunnel key: %w", err)
	}
	return nil
}

// Read returns every node's published key by node name; entries that do
// not parse, or whose file name and node disagree, are reported and left
// out (a node without a valid key has no peer: traffic to it is dropped,
// not sent in plaintext).
func (s KeyStore) Read() (map[string]TunnelKey, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]TunnelKey{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read tunnel keys: %w", err)
	}
	out := map[string]TunnelKey{}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var k TunnelKey
		if err := json.Unmarshal(b, &k); err != nil {
			errs = append(errs, fmt.Errorf("tunnel key %s: %w", name, err))
			continue
		}
		if k.Node+".json" != name || k.PublicKey == "" || !k.Endpoint.IsValid() {
			errs = append(errs, fmt.Errorf("tunnel key %s: want node %q, a public key and an endpoint", name, strings.TrimSuffix(name, ".json")))
			continue
		}
		out[k.Node] = k
	}
	return out, errors.Join(errs...)
}

func validNodeName(n string) bool {
	return n != "" && !strings.ContainsAny(n, `/\`) && n != "." && n != ".." && !strings.HasPrefix(n, ".")
}

// tunnelPeers derives the device's peers from the world and the published
// keys: every other node with a key, allowed its pod CIDRs. Nodes without
// pod CIDRs get no peer (there is nothing of theirs to route); nodes
// without a key are returned in missing. remote are every other node's pod
// CIDRs, keyed or not: what must never leave in plaintext.
func tunnelPeers(w *api.World, self string, keys map[string]TunnelKey) (peers []TunnelPeer, missing []string, remote []netip.Prefix, err error) {
	var errs []error
	for i := range w.Nodes {
		n := &w.Nodes[i]
		name := n.Metadata.Name
		if name == self {
			continue
		}
		cidrs, err := podCIDRs(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", name, err))
			continue
		}
		if len(cidrs) == 0 {
			continue
		}
		remote = append(remote, cidrs...)
		k, ok := keys[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		peers = append(peers, TunnelPeer{Node: name, PublicKey: k.PublicKey, Endpoint: k.Endpoint, AllowedIPs: cidrs})
	}
	slices.SortFunc(peers, func(a, b TunnelPeer) int { return strings.Compare(a.Node, b.Node) })
	slices.Sort(missing)
	slices.SortFunc(remote, netip.Prefix.Compare)
	return peers, missing, slices.Compact(remote), errors.Join(errs...)
}

// podCIDRs are a node's pod CIDRs (podCIDRs, else podCIDR), deduplicated.
func podCIDRs(n *api.Node) ([]netip.Prefix, error) {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("pod CIDR %q: %w", s, err)
		}
		if !slices.Contains(out, p.Masked()) {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// markUntunnelled sets NoTunnel on the ipcache entries of remote pods that
// no peer's allowed IPs cover: their traffic is dropped rather than sent in
// plaintext.
func markUntunnelled(ipc []policy.IPCacheEntry, peers []TunnelPeer) {
	for i := range ipc {
		e := &ipc[i]
		if !e.RemotePod {
			continue
		}
		covered := false
		for _, p := range peers {
			for _, c := range p.AllowedIPs {
				if c.Bits() <= e.Prefix.Bits() && c.Contains(e.Prefix.Addr()) {
					covered = true
				}
			}
		}
		e.NoTunnel = !covered
	}
}
