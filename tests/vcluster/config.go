package vcluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
)

// Config describes a cluster. The zero value is a valid two-node cluster.
type Config struct {
	// Name prefixes every object the cluster makes; default "nm-" and six
	// random hex digits. Lower-case letters, digits and '-', at most 24.
	Name string
	// Nodes; default node-1 and node-2. A node without PodCIDR gets
	// 10.0.<i+1>.0/24, one without IP the (i+1)th address of UnderlayCIDR.
	Nodes []NodeConfig
	// UnderlayCIDR is the nodes' shared network; default 192.168.10.0/24.
	UnderlayCIDR string
	// NamespaceLabels adds labels to namespaces in WorldYAML (the
	// kubernetes.io/metadata.name label is always there). A namespace listed
	// here appears in WorldYAML even without pods.
	NamespaceLabels map[string]map[string]string
}

// NodeConfig is one node.
type NodeConfig struct {
	Name    string // e.g. node-1
	PodCIDR string // e.g. 10.0.1.0/24
	IP      string // underlay address, e.g. 192.168.10.1
}

// PodConfig is one pod.
type PodConfig struct {
	Namespace string // default "default"
	Name      string
	Node      string
	// IP is the pod's address; the zero Addr means the next free address of
	// the node's pod CIDR.
	IP             netip.Addr
	Labels         map[string]string
	Ports          []Port // the container's named ports, for WorldYAML
	ServiceAccount string // spec.serviceAccountName in WorldYAML
}

// Port is a named container port.
type Port struct {
	Name     string
	Port     uint16
	Protocol string // TCP (default), UDP or SCTP
}

const maxNameLen = 24

var (
	clusterNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	// dnsLabelRE is a Kubernetes DNS-1123 label: node, namespace and pod
	// names. They never contain '_', which separates name parts on disk.
	dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// nodeNameRE also allows dots, as Kubernetes node names do.
	nodeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
)

// RandomName returns a fresh default cluster name.
func RandomName() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "nm-" + hex.EncodeToString(b)
}

// Defaults fills every unset field.
func (c *Config) Defaults() {
	if c.Name == "" {
		c.Name = RandomName()
	}
	if c.UnderlayCIDR == "" {
		c.UnderlayCIDR = "192.168.10.0/24"
	}
	if len(c.Nodes) == 0 {
		c.Nodes = []NodeConfig{{Name: "node-1"}, {Name: "node-2"}}
	} else {
		c.Nodes = slices.Clone(c.Nodes)
	}
	under, err := netip.ParsePrefix(c.UnderlayCIDR)
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == "" {
			n.Name = fmt.Sprintf("node-%d", i+1)
		}
		if n.PodCIDR == "" {
			n.PodCIDR = fmt.Sprintf("10.0.%d.0/24", i+1)
		}
		if n.IP == "" && err == nil && under.Addr().Is4() {
			a := under.Masked().Addr()
			for range i + 1 {
				a = a.Next()
			}
			n.IP = a.String()
		}
	}
}

// Validate reports every problem, as Defaults left the config.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Name) > maxNameLen || !clusterNameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("name %q: want lower-case letters, digits and '-', at most %d", c.Name, maxNameLen))
	}
	under, err := netip.ParsePrefix(c.UnderlayCIDR)
	if err != nil || !under.Addr().Is4() || under.Bits() > 30 || under != under.Masked() {
		errs = append(errs, fmt.Errorf("underlay %q: want an IPv4 network of /30 or larger", c.UnderlayCIDR))
		under = netip.Prefix{}
	}
	if len(c.Nodes) == 0 {
		errs = append(errs, errors.New("no nodes"))
	}
	names := map[string]bool{}
	ips := map[netip.Addr]string{}
	var cidrs []netip.Prefix
	for i, n := range c.Nodes {
		where := fmt.Sprintf("nodes[%d] %q", i, n.Name)
		if !nodeNameRE.MatchString(n.Name) {
			errs = append(errs, fmt.Errorf("%s: name must be a DNS-1123 subdomain of at most 63 characters", where))
		}
		if names[n.Name] {
			errs = append(errs, fmt.Errorf("%s: name used twice", where))
		}
		names[n.Name] = true
		p, err := netip.ParsePrefix(n.PodCIDR)
		switch {
		case err != nil || !p.Addr().Is4():
			errs = append(errs, fmt.Errorf("%s: pod CIDR %q is not an IPv4 network", where, n.PodCIDR))
		case p != p.Masked() || p.Bits() > 30:
			errs = append(errs, fmt.Errorf("%s: pod CIDR %q must be a network address of /30 or larger", where, n.PodCIDR))
		default:
			for j, q := range cidrs {
				if q.IsValid() && q.Overlaps(p) {
					errs = append(errs, fmt.Errorf("%s: pod CIDR %s overlaps node %q's %s", where, p, c.Nodes[j].Name, q))
				}
			}
			if under.IsValid() && under.Overlaps(p) {
				errs = append(errs, fmt.Errorf("%s: pod CIDR %s overlaps the underlay %s", where, p, under))
			}
			if p.Overlaps(linkLocal) {
				errs = append(errs, fmt.Errorf("%s: pod CIDR %s overlaps link-local %s", where, p, linkLocal))
			}
		}
		cidrs = append(cidrs, p)
		a, err := netip.ParseAddr(n.IP)
		switch {
		case err != nil || !a.Is4():
			errs = append(errs, fmt.Errorf("%s: IP %q is not an IPv4 address", where, n.IP))
		case under.IsValid() && (!under.Contains(a) || a == under.Addr() || a == lastAddr(under)):
			errs = append(errs, fmt.Errorf("%s: IP %s is not a host address of the underlay %s", where, a, under))
		case ips[a] != "":
			errs = append(errs, fmt.Errorf("%s: IP %s is node %q's too", where, a, ips[a]))
		default:
			ips[a] = n.Name
		}
	}
	for ns := range c.NamespaceLabels {
		if !dnsLabelRE.MatchString(ns) {
			errs = append(errs, fmt.Errorf("namespace labels: %q is not a DNS-1123 label", ns))
		}
	}
	return errors.Join(errs...)
}

func (p *PodConfig) validate() error {
	var errs []error
	if !dnsLabelRE.MatchString(p.Namespace) {
		errs = append(errs, fmt.Errorf("namespace %q is not a DNS-1123 label", p.Namespace))
	}
	if !dnsLabelRE.MatchString(p.Name) {
		errs = append(errs, fmt.Errorf("name %q is not a DNS-1123 label", p.Name))
	}
	if p.IP.IsValid() && !p.IP.Is4() {
		errs = append(errs, fmt.Errorf("IP %s is not IPv4", p.IP))
	}
	for i, port := range p.Ports {
		if port.Port == 0 {
			errs = append(errs, fmt.Errorf("ports[%d]: port 0", i))
		}
		switch port.Protocol {
		case "", "TCP", "UDP", "SCTP":
		default:
			errs = append(errs, fmt.Errorf("ports[%d]: protocol %q is not TCP, UDP or SCTP", i, port.Protocol))
		}
	}
	return errors.Join(errs...)
}

var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	for i := 3; i >= 0 && host > 0; i-- {
		bits := min(host, 8)
		a[i] |= byte(1<<bits - 1)
		host -= bits
	}
	return netip.AddrFrom4(a)
}
