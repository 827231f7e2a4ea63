package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/wireguard"
)

// tunnel adapts a wireguard.Device to agent.Tunnel.
type tunnel struct {
	dev     *wireguard.Device
	keyFile string
	port    int

	mu  sync.Mutex
	pub string
}

// openTunnel opens the node's WireGuard device (in the agent's network
// namespace: the node's) and gives it to the agent.
func openTunnel(a *agent.Agent, cfg agent.Config, wg wireguard.Config, log *slog.Logger) (*wireguard.Device, error) {
	if wg.KeyFile == "" {
		wg.KeyFile = filepath.Join("/var/lib/nodemesh", cfg.NodeName, "wireguard.key")
	}
	wg.Logger = log.With("component", "wireguard")
	key, created, err := wireguard.LoadOrCreateKey(wg.KeyFile)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("made the node's WireGuard key pair", "key_file", wg.KeyFile, "public_key", key.PublicKey().String())
	}
	dev, err := wireguard.Open(wg)
	if err != nil {
		return nil, err
	}
	wg.Defaults()
	a.SetTunnel(&tunnel{dev: dev, keyFile: wg.KeyFile, pub: key.PublicKey().String(), port: wg.ListenPort}, agent.KeyStore{Dir: cfg.KeyStore})
	log.Info("encryption between nodes: WireGuard", "interface", dev.Interface(), "kind", dev.Kind(), "port", wg.ListenPort)
	return dev, nil
}

func (t *tunnel) PublicKey() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pub
}

func (t *tunnel) ListenPort() int { return t.port }

// RotateKey stores a new key first, so a restart keeps it, then uses it.
func (t *tunnel) RotateKey() error {
	k, err := wireguard.GeneratePrivateKey()
	if err != nil {
		return err
	}
	if err := wireguard.StoreKey(t.keyFile, k); err != nil {
		return err
	}
	if err := t.dev.SetPrivateKey(k); err != nil {
		return err
	}
	t.mu.Lock()
	t.pub = k.PublicKey().String()
	t.mu.Unlock()
	return nil
}

func (t *tunnel) SetPeers(peers []agent.TunnelPeer, fallback []netip.Prefix) error {
	ps := make([]wireguard.Peer, 0, len(peers))
	for _, p := range peers {
		k, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			return fmt.Errorf("node %s: public key: %w", p.Node, err)
		}
		ps = append(ps, wireguard.Peer{PublicKey: k, Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs, Name: p.Node})
	}
	if err := t.dev.SetFallback(fallback); err != nil {
		return err
	}
	return t.dev.SetPeers(ps)
}

func (t *tunnel) Status() (*agent.EncryptionStatus, error) {
	st, err := t.dev.Status()
	if err != nil {
		return nil, err
	}
	out := &agent.EncryptionStatus{Interface: st.Interface, Kind: st.Kind, PublicKey: st.PublicKey.String(), ListenPort: st.ListenPort}
	for _, p := range st.Peers {
		info := agent.TunnelPeerInfo{Node: p.Name, PublicKey: p.PublicKey.String(), LastHandshake: p.LastHandshake,
			RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
		if p.Endpoint.IsValid() {
			info.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			info.AllowedIPs = append(info.AllowedIPs, a.String())
		}
		out.Peers = append(out.Peers, info)
	}
	return out, nil
}
