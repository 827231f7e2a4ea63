package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/identity"
)

// NamedPort is a port a pod's container declares by name.
type NamedPort struct {
	Name  string
	Port  uint16
	Proto Proto
}

// Endpoint is a pod as policy sees it.
type Endpoint struct {
	Namespace, Name string
	Node            string
	PodLabels       map[string]string
	Labels          identity.Labels // identity labels, derived from PodLabels and the namespace
	Addrs           []netip.Addr
	NamedPorts      []NamedPort
	ServiceAccount  string
}

// Key is "namespace/name".
func (e *Endpoint) Key() string { return e.Namespace + "/" + e.Name }

// lookupNamedPort lists the ports this endpoint declares under name for
// protocol proto (ProtoAny: any protocol).
func (e *Endpoint) lookupNamedPort(name string, proto Proto) []NamedPort {
	var out []NamedPort
	for _, np := range e.NamedPorts {
		if np.Name == name && (proto == ProtoAny || np.Proto == proto) {
			out = append(out, np)
		}
	}
	return out
}

// EndpointFromPod builds the endpoint of a pod in a namespace with labels
// nsLabels. Host-network pods are not endpoints (they are their node).
func EndpointFromPod(p *api.Pod, nsLabels map[string]string) *Endpoint {
	e := &Endpoint{
		Namespace:      p.Metadata.Namespace,
		Name:           p.Metadata.Name,
		Node:           p.Spec.NodeName,
		ServiceAccount: p.ServiceAccountName(),
		Addrs:          p.Addresses(),
		PodLabels:      p.Metadata.Labels,
	}
	e.Labels = identity.ForPod(p.Metadata.Labels, e.Namespace, nsLabels, e.ServiceAccount)
	for _, c := range append(append([]api.Container{}, p.Spec.Containers...), p.Spec.InitContainers...) {
		for _, cp := range c.Ports {
			if cp.Name == "" {
				continue
			}
			proto := ProtoTCP
			if cp.Protocol != "" {
				proto, _ = ParseProto(cp.Protocol)
			}
			e.NamedPorts = append(e.NamedPorts, NamedPort{Name: cp.Name, Port: uint16(cp.ContainerPort), Proto: proto})
		}
	}
	return e
}

// World is the cluster state with endpoints built: who is at which address.
type World struct {
	sorted     []*Endpoint // cache of Endpoints(); nil after a change
	byKey      map[string]*Endpoint
	byAddr     map[netip.Addr]*Endpoint
	nodeAddrs  map[netip.Addr]string
	apiServer  map[netip.Addr]bool
	namespaces map[string]map[string]string
}

// NewWorld builds the endpoints of a decoded world.
func NewWorld(w *api.World) *World {
	ww := newWorld()
	for _, ns := range w.Namespaces {
		ww.namespaces[ns.Metadata.Name] = ns.Metadata.Labels
	}
	for i := range w.Nodes {
		ww.setNode(&w.Nodes[i])
	}
	ww.setAPIServer(w.APIServerIPs)
	for i := range w.Pods {
		p := &w.Pods[i]
		if !p.Spec.HostNetwork {
			ww.setEndpoint(EndpointFromPod(p, ww.namespaces[p.Metadata.Namespace]))
		}
	}
	return ww
}

func newWorld() *World {
	return &World{
		byKey:      map[string]*Endpoint{},
		byAddr:     map[netip.Addr]*Endpoint{},
		nodeAddrs:  map[netip.Addr]string{},
		apiServer:  map[netip.Addr]bool{},
		namespaces: map[string]map[string]string{},
	}
}

func (w *World) setNode(n *api.Node) {
	w.removeNode(n.Metadata.Name)
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			w.nodeAddrs[ip.Unmap()] = n.Metadata.Name
		}
	}
}

func (w *World) removeNode(name string) {
	for a, n := range w.nodeAddrs {
		if n == name {
			delete(w.nodeAddrs, a)
		}
	}
}

func (w *World) setAPIServer(ips []string) {
	clear(w.apiServer)
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			w.apiServer[ip.Unmap()] = true
		}
	}
}

// setEndpoint adds or replaces an endpoint.
func (w *World) setEndpoint(e *Endpoint) {
	w.removeEndpoint(e.Key())
	w.byKey[e.Key()] = e
	for _, a := range e.Addrs {
		w.byAddr[a] = e
	}
	w.sorted = nil
}

func (w *World) removeEndpoint(key string) {
	old, ok := w.byKey[key]
	if !ok {
		return
	}
	for _, a := range old.Addrs {
		if w.byAddr[a] == old {
			delete(w.byAddr, a)
		}
	}
	delete(w.byKey, key)
	w.sorted = nil
}

// Endpoints lists the endpoints sorted by namespace/name.
func (w *World) Endpoints() []*Endpoint {
	if w.sorted == nil {
		w.sorted = make([]*Endpoint, 0, len(w.byKey))
		for _, e := range w.byKey {
			w.sorted = append(w.sorted, e)
		}
		sort.Slice(w.sorted, func(i, j int) bool { return w.sorted[i].Key() < w.sorted[j].Key() })
	}
	return w.sorted
}

// Endpoint returns the endpoint named "ns/pod".
func (w *World) Endpoint(key string) (*Endpoint, bool) {
	e, ok := w.byKey[key]
	return e, ok
}

// Peer is one side of a flow: a pod, a node, the API server or an address
// outside the cluster.
type Peer struct {
	Endpoint  *Endpoint  // set for a pod
	Addr      netip.Addr // the address used, when known
	Node      string     // set for a node's address
	APIServer bool
}

// String names the peer for users.
func (p Peer) String() string {
	switch {
	case p.Endpoint != nil:
		return p.Endpoint.Key()
	case p.APIServer:
		return "kube-apiserver(" + p.Addr.String() + ")"
	case p.Node != "":
		return "node:" + p.Node + "(" + p.Addr.String() + ")"
	}
	return p.Addr.String()
}

// ResolvePeer resolves "ns/pod", "node:NAME" or an IP address.
func (w *World) ResolvePeer(s string) (Peer, error) {
	if name, ok := strings.CutPrefix(s, "node:"); ok {
		var addrs []netip.Addr
		for a, n := range w.nodeAddrs {
			if n == name {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) > 0 {
			sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
			return w.PeerForAddr(addrs[0]), nil
		}
		return Peer{}, fmt.Errorf("%q: no node %s with an address in the world", s, name)
	}
	if strings.Contains(s, "/") {
		e, ok := w.byKey[s]
		if !ok {
			return Peer{}, fmt.Errorf("%q: no such pod in the world (want namespace/pod or an IP address)", s)
		}
		p := Peer{Endpoint: e}
		if len(e.Addrs) > 0 {
			p.Addr = e.Addrs[0]
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Peer{}, fmt.Errorf("%q is neither namespace/pod nor an IP address", s)
	}
	return w.PeerForAddr(a.Unmap()), nil
}

// PeerForAddr says who is at an address.
func (w *World) PeerForAddr(a netip.Addr) Peer {
	if e, ok := w.byAddr[a]; ok {
		return Peer{Endpoint: e, Addr: a}
	}
	return Peer{Addr: a, Node: w.nodeAddrs[a], APIServer: w.apiServer[a]}
}

// reservedIdentity is the identity of a non-pod peer seen from localNode.
func (p Peer) reservedIdentity(localNode string) identity.NumericIdentity {
	local := p.Node != "" && p.Node == localNode
	switch {
	case p.APIServer && local:
		return identity.HostKubeAPIServer
	case p.APIServer && p.Node != "":
		return identity.RemoteNodeKubeAPIServer
	case p.APIServer:
		return identity.KubeAPIServer
	case local:
		return identity.Host
	case p.Node != "":
		return identity.RemoteNode
	case p.Addr.Is6():
		return identity.WorldIPv6
	}
	return identity.WorldIPv4
}

// Labels are the identity labels of the peer as seen from localNode.
func (p Peer) Labels(localNode string) identity.Labels {
	if p.Endpoint != nil {
		return p.Endpoint.Labels
	}
	return identity.ReservedLabels(p.reservedIdentity(localNode))
}

// outsideCluster reports whether the peer is neither pod, node nor API server.
func (p Peer) outsideCluster() bool {
	return p.Endpoint == nil && p.Node == "" && !p.APIServer
}
