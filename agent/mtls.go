package agent

// mTLS between node proxies (docs/ARCHITECTURE.md): the agent keeps the
// node's workload SVIDs current (an identity source), derives each pod's
// mode, serves the proxy its mTLS listeners and secrets, and steers flows
// to them only once the proxy has ACKed what serves them.

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/xds"
)

// IdentitySource is where the node's workload SVIDs come from: the
// built-in CA's certs.Manager, or SPIRE (certs/spire).
type IdentitySource interface {
	certs.Source
	// Run keeps the source current until ctx ends.
	Run(ctx context.Context) error
}

// SetIdentities gives the agent its identity source (mgr, the built-in
// CA's manager, when that is the source: it is told the node's workloads
// and reports per-identity status). Without one, mTLS is disabled on the
// node. Call before Run.
func (a *Agent) SetIdentities(src IdentitySource, mgr *certs.Manager) {
	a.idRunner, a.idSource, a.idManager = src, src, mgr
}

// runIdentities runs the identity source and reprograms on every snapshot.
func (a *Agent) runIdentities(ctx context.Context, run func(string, func() error)) {
	if a.idRunner == nil {
		return
	}
	run("identities", func() error { return a.idRunner.Run(ctx) })
	run("identity-watch", func() error {
		return a.idSource.Watch(ctx, func(s *certs.Snapshot) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.idSnap = s
			a.log.Info("workload identities updated", "svids", s.Len(), "generation", s.Generation)
			a.program()
		})
	})
}

// modeOf is the mTLS mode of ep: its namespace's label, else the mesh's;
// disabled without an identity source.
func (a *Agent) modeOf(ep *policy.Endpoint) xds.MTLSMode {
	if a.idSource == nil || ep == nil {
		return xds.MTLSDisabled
	}
	if m, ok := a.nsModes[ep.Namespace]; ok {
		return m
	}
	m, _ := xds.ParseMTLSMode(a.cfg.MTLSMode) // validated
	return m
}

// spiffeIDOf is ep's SPIFFE ID in the configured trust domain.
func (a *Agent) spiffeIDOf(ep *policy.Endpoint) spiffeid.ID {
	id, err := spiffeid.FromString(identity.SPIFFEID(a.cfg.TrustDomain, ep.Namespace, ep.ServiceAccount))
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// namespaceModes reads the mode label of every namespace; an invalid value
// is reported and the namespace keeps the mesh default.
func namespaceModes(nss map[string]map[string]string) (map[string]xds.MTLSMode, []string) {
	out := map[string]xds.MTLSMode{}
	var problems []string
	for name, labels := range nss {
		v, ok := labels[MTLSModeLabel]
		if !ok {
			continue
		}
		m, err := xds.ParseMTLSMode(v)
		if err != nil {
			problems = append(problems, "namespace "+name+": label "+MTLSModeLabel+": "+err.Error()+"; the mesh default applies")
			continue
		}
		out[name] = m
	}
	slices.Sort(problems)
	return out, problems
}

// withMTLS completes the proxy's input and the node's ipcache with what
// mTLS needs: the local pods' IDs and modes, the identities, and the
// remote mesh pods that accept mTLS (their SPIFFE IDs for the peer
// binding; the ipcache flag that lets local pods originate to them).
// byKey holds every pod. Without an identity source it changes nothing.
func (a *Agent) withMTLS(in *xds.Input, ipc []policy.IPCacheEntry, byKey map[string]*policy.Endpoint) {
	if a.idSource == nil {
		return
	}
	m := &xds.MTLSInput{Identities: a.idSnap, Peers: map[netip.Addr]spiffeid.ID{}}
	for i := range in.Endpoints {
		ep := byKey[in.Endpoints[i].Key]
		in.Endpoints[i].ID, in.Endpoints[i].Mode = a.spiffeIDOf(ep), a.modeOf(ep)
	}
	for i := range ipc {
		e := &ipc[i]
		if !e.RemotePod {
			continue
		}
		ep := a.byAddr[e.Prefix.Addr()]
		if ep == nil || a.modeOf(ep) == xds.MTLSDisabled {
			continue
		}
		e.MTLSPeer = true
		if id := a.spiffeIDOf(ep); !id.IsZero() {
			m.Peers[e.Prefix.Addr()] = id
		}
	}
	in.MTLS = m
}

// requestSVIDs tells the built-in CA's manager which workloads of the node
// need SVIDs: the pods whose mode is not disabled.
func (a *Agent) requestSVIDs(local []*policy.Endpoint) {
	if a.idManager == nil {
		return
	}
	var ws []certs.Workload
	var key strings.Builder
	for _, ep := range local {
		if a.modeOf(ep) == xds.MTLSDisabled {
			continue
		}
		ws = append(ws, certs.Workload{Namespace: ep.Namespace, Pod: ep.Name, ServiceAccount: ep.ServiceAccount})
		key.WriteString(ep.Key() + "\x00" + ep.ServiceAccount + "\x00")
	}
	if key.String() == a.svidWorkloads {
		return
	}
	a.svidWorkloads = key.String()
	if err := a.idManager.SetWorkloads(ws); err != nil {
		a.log.Warn("some workloads cannot have an SVID", "err", err)
	}
}

// endpointFlags is a local pod's mTLS steering. A permissive pod accepts
// once the node proxy has ACKed its mTLS listeners (before that, with no
// proxy at all, its traffic stays as it was: permissive means plaintext
// still works), and originates once the proxy has also ACKed its SVID;
// until then its peers see plaintext, which permissive peers accept. A
// strict pod does both from the start: its mTLS flows drop
// (proxy-unavailable) until the proxy serves them — fail closed.
func endpointFlags(mode xds.MTLSMode, acked, ready bool) bpf.EndpointFlags {
	switch mode {
	case xds.MTLSStrict:
		return bpf.EndpointMTLSOriginate | bpf.EndpointMTLSAccept
	case xds.MTLSPermissive:
		switch {
		case acked && ready:
			return bpf.EndpointMTLSOriginate | bpf.EndpointMTLSAccept
		case acked:
			return bpf.EndpointMTLSAccept
		}
	}
	return 0
}
