package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/xds"
)

// Config configures an agent.
type Config struct {
	NodeName    string
	WorldPaths  []string // standalone mode: world files or directories
	PolicyPaths []string // standalone mode: policy files or directories
	PinDir      string   // bpffs directory of this node's maps, programs and links
	APISocket   string   // unix socket of the local API
	MetricsAddr string   // host:port or unix:/path for Prometheus /metrics; "" disables
	// InterfaceGlob selects the host-side pod veths to attach to.
	InterfaceGlob string
	Resync        time.Duration
	EventBuffer   int
	// XDSSocket is the unix socket of the xDS server the node proxy
	// (Envoy or nodemesh-proxy) connects to.
	XDSSocket string
	Proxy     xds.Config
	// MTLSMode is the mesh-wide mode of mTLS between node proxies
	// (disabled, permissive, strict); a namespace's label
	// mtls.nodemesh.io/mode overrides it for its pods.
	MTLSMode string
	// TrustDomain is the SPIFFE trust domain of the workloads' IDs.
	TrustDomain string
	// IdentitySource is where the workloads' SVIDs come from: "ca", the
	// built-in CA (nodemesh-ca) at CASocket, or "spire", a SPIRE agent's
	// Workload API (flags of package certs/spire).
	IdentitySource string
	CASocket       string
	// Encryption is "disabled" or "wireguard": transparent encryption of
	// pod traffic between nodes (package wireguard; its flags configure
	// the device). KeyStore is where nodes publish their public keys in
	// standalone mode (a directory every agent can read).
	Encryption string
	KeyStore   string
	// RotateKeyEvery, when set, rotates the node's WireGuard key at this
	// interval (as meshctl encryption rotate-key does).
	RotateKeyEvery time.Duration
}

// MTLSModeLabel is the namespace label that overrides --mtls-mode for the
// namespace's pods.
const MTLSModeLabel = "mtls.nodemesh.io/mode"

// DefaultTrustDomain is the trust domain when none is configured, as in
// Istio and Cilium.
const DefaultTrustDomain = "cluster.local"

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.PinDir == "" && c.NodeName != "" {
		c.PinDir = filepath.Join("/sys/fs/bpf/nodemesh", c.NodeName)
	}
	if c.APISocket == "" && c.NodeName != "" {
		c.APISocket = filepath.Join("/run/nodemesh", c.NodeName, "agent.sock")
	}
	if c.XDSSocket == "" && c.NodeName != "" {
		c.XDSSocket = filepath.Join("/run/nodemesh", c.NodeName, "xds.sock")
	}
	c.Proxy.Defaults()
	if c.MTLSMode == "" {
		c.MTLSMode = string(xds.MTLSPermissive)
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.Encryption == "" {
		c.Encryption = "disabled"
	}
	if c.KeyStore == "" {
		c.KeyStore = "/run/nodemesh/wireguard/keys"
	}
	if c.IdentitySource == "" {
		c.IdentitySource = "ca"
	}
	if c.CASocket == "" && c.NodeName != "" {
		c.CASocket = filepath.Join("/run/nodemesh/ca/nodes", c.NodeName+".sock")
	}
	if c.InterfaceGlob == "" {
		c.InterfaceGlob = "lxc*"
	}
	if c.Resync == 0 {
		c.Resync = 5 * time.Second
	}
	if c.EventBuffer == 0 {
		c.EventBuffer = 4096
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required: the agent enforces policy for the pods of one node"))
	}
	if len(c.WorldPaths) == 0 {
		errs = append(errs, errors.New("--world is required in standalone mode (files or directories of Namespace, Node and Pod objects)"))
	}
	if len(c.PolicyPaths) == 0 {
		errs = append(errs, errors.New("--policies is required in standalone mode (files or directories of policy documents)"))
	}
	if _, err := filepath.Match(c.InterfaceGlob, "x"); err != nil {
		errs = append(errs, fmt.Errorf("--interface-glob %q: %w", c.InterfaceGlob, err))
	}
	if err := c.Proxy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := xds.ParseMTLSMode(c.MTLSMode); err != nil {
		errs = append(errs, fmt.Errorf("--mtls-mode: %w", err))
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err))
	}
	if c.Encryption != "disabled" && c.Encryption != "wireguard" {
		errs = append(errs, fmt.Errorf("--encryption %q: want disabled or wireguard", c.Encryption))
	}
	if c.RotateKeyEvery < 0 || (c.RotateKeyEvery > 0 && c.RotateKeyEvery < time.Minute) {
		errs = append(errs, fmt.Errorf("--wireguard-rotate-every %s: 0 (off) or at least 1m (every rotation pauses traffic to each peer until it reads the new key)", c.RotateKeyEvery))
	}
	if c.IdentitySource != "ca" && c.IdentitySource != "spire" {
		errs = append(errs, fmt.Errorf("--identity-source %q: want ca (the built-in CA, nodemesh-ca) or spire", c.IdentitySource))
	}
	if c.EventBuffer < 1 {
		errs = append(errs, fmt.Errorf("--event-buffer %d: must be at least 1", c.EventBuffer))
	}
	return errors.Join(errs...)
}

// BindFlags binds the configuration to command-line flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "name of the node this agent runs on (its Node object's name)")
	fs.StringSliceVar(&c.WorldPaths, "world", c.WorldPaths, "standalone mode: world file or directory (Namespaces, Nodes, Pods as kubectl prints them); repeatable")
	fs.StringSliceVar(&c.PolicyPaths, "policies", c.PolicyPaths, "standalone mode: policy file or directory; repeatable")
	fs.StringVar(&c.PinDir, "bpf-pin-dir", c.PinDir, "bpffs directory for this node's pinned maps and links (default /sys/fs/bpf/nodemesh/<node>)")
	fs.StringVar(&c.APISocket, "api-socket", c.APISocket, "unix socket of the local API used by meshctl (default /run/nodemesh/<node>/agent.sock)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "serve Prometheus metrics at host:port or unix:/path (empty: off)")
	fs.StringVar(&c.InterfaceGlob, "interface-glob", c.InterfaceGlob, "attach to the host-side pod veths whose name matches this glob (as Cilium, pod veths are named lxc...); never the node's own uplink")
	fs.DurationVar(&c.Resync, "resync", c.Resync, "reread the inputs this often even without change notifications")
	fs.IntVar(&c.EventBuffer, "event-buffer", c.EventBuffer, "flow events kept for 'meshctl observe --last'")
	fs.StringVar(&c.XDSSocket, "xds-socket", c.XDSSocket, "unix socket of the xDS server for the node proxy (default /run/nodemesh/<node>/xds.sock)")
	c.Proxy.BindFlags(fs)
	fs.StringVar(&c.MTLSMode, "mtls-mode", c.MTLSMode, "mTLS between node proxies for pods on different nodes: disabled, permissive (originate mTLS to mesh peers, accept mTLS and plaintext) or strict (refuse plaintext from mesh pods); the namespace label "+MTLSModeLabel+" overrides it (default permissive)")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain of the workload identities spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> (default cluster.local)")
	fs.StringVar(&c.CASocket, "ca-socket", c.CASocket, "this node's socket of the built-in CA, nodemesh-ca (default /run/nodemesh/ca/nodes/<node>.sock)")
	fs.StringVar(&c.Encryption, "encryption", c.Encryption, "encrypt pod traffic between nodes: disabled or wireguard (each node makes its key pair, publishes the public key in --wireguard-key-store and peers with every node that did; pod traffic to a node without a key is dropped, never sent in plaintext) (default disabled)")
	fs.StringVar(&c.KeyStore, "wireguard-key-store", c.KeyStore, "standalone mode: directory where the nodes publish their WireGuard public keys and endpoints, shared by all agents (default /run/nodemesh/wireguard/keys)")
	fs.DurationVar(&c.RotateKeyEvery, "wireguard-rotate-every", c.RotateKeyEvery, "rotate the node's WireGuard key at this interval, as 'meshctl encryption rotate-key' does (0: only on request)")
	fs.StringVar(&c.IdentitySource, "identity-source", c.IdentitySource, "where the workloads' SVIDs come from: ca (the built-in CA, nodemesh-ca, at --ca-socket) or spire (a SPIRE agent's Workload API at --spire-socket; see docs/spire.md) (default ca)")
}
