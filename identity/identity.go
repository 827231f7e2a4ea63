package identity

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
)

// NumericIdentity is a security identity as carried in BPF maps.
type NumericIdentity uint32

// Reserved identities, numbered as Cilium numbers them.
const (
	Unknown       NumericIdentity = 0
	Host          NumericIdentity = 1 // the node the observing endpoint runs on
	World         NumericIdentity = 2 // anything outside the cluster
	Unmanaged     NumericIdentity = 3
	Health        NumericIdentity = 4
	Init          NumericIdentity = 5
	RemoteNode    NumericIdentity = 6 // any other node of the cluster
	KubeAPIServer NumericIdentity = 7
	Ingress       NumericIdentity = 8
	WorldIPv4     NumericIdentity = 9
	WorldIPv6     NumericIdentity = 10
	// An address that is both a node's and the API server's carries both
	// labels, so it needs an identity of its own.
	HostKubeAPIServer       NumericIdentity = 11
	RemoteNodeKubeAPIServer NumericIdentity = 12

	// MinAllocated is the first identity an Allocator hands out.
	MinAllocated NumericIdentity = 256
)

var reservedNames = map[NumericIdentity]string{
	Host: "host", World: "world", Unmanaged: "unmanaged", Health: "health", Init: "init",
	RemoteNode: "remote-node", KubeAPIServer: "kube-apiserver", Ingress: "ingress",
	WorldIPv4: "world-ipv4", WorldIPv6: "world-ipv6",
	HostKubeAPIServer: "host+kube-apiserver", RemoteNodeKubeAPIServer: "remote-node+kube-apiserver",
}

// Reserved lists the reserved identities.
func Reserved() []NumericIdentity {
	return []NumericIdentity{Host, World, Unmanaged, Health, Init, RemoteNode, KubeAPIServer, Ingress, WorldIPv4, WorldIPv6,
		HostKubeAPIServer, RemoteNodeKubeAPIServer}
}

// IsLocalHost reports whether id is the observing endpoint's own node.
func (id NumericIdentity) IsLocalHost() bool { return id == Host || id == HostKubeAPIServer }

// IsReserved reports whether id is below MinAllocated.
func (id NumericIdentity) IsReserved() bool { return id > 0 && id < MinAllocated }

func (id NumericIdentity) String() string {
	if n, ok := reservedNames[id]; ok {
		return n
	}
	return strconv.FormatUint(uint64(id), 10)
}

// ReservedLabels returns the labels of a reserved identity. The world
// identities all carry reserved:world, so that the world entity selects
// addresses of either family.
func ReservedLabels(id NumericIdentity) Labels {
	n, ok := reservedNames[id]
	if !ok {
		return nil
	}
	switch id {
	case WorldIPv4, WorldIPv6:
		return NewLabels(Label{SourceReserved, "world", ""}, Label{SourceReserved, n, ""})
	case HostKubeAPIServer:
		return NewLabels(Label{SourceReserved, "host", ""}, Label{SourceReserved, "kube-apiserver", ""})
	case RemoteNodeKubeAPIServer:
		return NewLabels(Label{SourceReserved, "remote-node", ""}, Label{SourceReserved, "kube-apiserver", ""})
	}
	return Labels{{SourceReserved, n, ""}}
}

// Allocator hands out numeric identities for label sets. Every node must get
// the same number for the same labels. Allocate takes a reference; Release
// drops one, and the identity may be reused once none is left.
type Allocator interface {
	Allocate(ctx context.Context, labels Labels) (NumericIdentity, error)
	Release(ctx context.Context, id NumericIdentity) error
	Lookup(id NumericIdentity) (Labels, bool)
}

// ErrUnknownIdentity is returned by Release for an identity never allocated.
var ErrUnknownIdentity = errors.New("unknown identity")

// MemoryAllocator is an Allocator for one process: standalone mode and tests.
type MemoryAllocator struct {
	mu     sync.Mutex
	byKey  map[string]NumericIdentity
	labels map[NumericIdentity]Labels
	refs   map[NumericIdentity]int
	next   NumericIdentity
	free   []NumericIdentity
}

// NewMemoryAllocator returns an empty in-memory allocator.
func NewMemoryAllocator() *MemoryAllocator {
	return &MemoryAllocator{
		byKey:  map[string]NumericIdentity{},
		labels: map[NumericIdentity]Labels{},
		refs:   map[NumericIdentity]int{},
		next:   MinAllocated,
	}
}

// Allocate returns the identity of labels, allocating one if needed.
func (a *MemoryAllocator) Allocate(_ context.Context, labels Labels) (NumericIdentity, error) {
	if len(labels) == 0 {
		return 0, errors.New("allocate identity: empty label set")
	}
	key := labels.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byKey[key]; ok {
		a.refs[id]++
		return id, nil
	}
	var id NumericIdentity
	if n := len(a.free); n > 0 {
		id, a.free = a.free[n-1], a.free[:n-1]
	} else {
		id = a.next
		a.next++
	}
	a.byKey[key] = id
	a.labels[id] = labels
	a.refs[id] = 1
	return id, nil
}

// Release drops one reference to id.
func (a *MemoryAllocator) Release(_ context.Context, id NumericIdentity) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.refs[id]
	if !ok {
		return fmt.Errorf("release identity %d: %w", id, ErrUnknownIdentity)
	}
	if n > 1 {
		a.refs[id] = n - 1
		return nil
	}
	delete(a.byKey, a.labels[id].String())
	delete(a.labels, id)
	delete(a.refs, id)
	a.free = append(a.free, id)
	return nil
}

// Lookup returns the labels of an allocated or reserved identity.
func (a *MemoryAllocator) Lookup(id NumericIdentity) (Labels, bool) {
	if id.IsReserved() {
		ls := ReservedLabels(id)
		return ls, ls != nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ls, ok := a.labels[id]
	return ls, ok
}
