// Package worldauth is the standalone-mode certs.Authorizer: it allows a
// node the SPIFFE ID of a workload only if the world state (the api.World
// the agent reads from its world files) has that pod, scheduled on that
// node, running as that service account.
//
// It is a package of its own so that package certs, which the proxy uses to
// verify SVIDs, does not depend on the policy model's documents.
package worldauth

import (
	"context"
	"fmt"
	"sync"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
)

// Authorizer decides from the latest world it was given. It is safe for
// concurrent use.
type Authorizer struct {
	mu   sync.RWMutex
	pods map[podKey]podInfo
}

type podKey struct{ namespace, name string }

type podInfo struct {
	node, serviceAccount, phase string
	hostNetwork                 bool
}

// New returns an Authorizer that knows w (which may be nil: no pods).
func New(w *api.World) *Authorizer {
	a := &Authorizer{}
	a.SetWorld(w)
	return a
}

// SetWorld replaces the world the Authorizer decides from.
func (a *Authorizer) SetWorld(w *api.World) {
	pods := map[podKey]podInfo{}
	if w != nil {
		for i := range w.Pods {
			p := &w.Pods[i]
			pods[podKey{p.Metadata.Namespace, p.Metadata.Name}] = podInfo{
				node:           p.Spec.NodeName,
				serviceAccount: p.ServiceAccountName(),
				phase:          p.Status.Phase,
				hostNetwork:    p.Spec.HostNetwork,
			}
		}
	}
	a.mu.Lock()
	a.pods = pods
	a.mu.Unlock()
}

// Authorize allows req if its pod exists, runs on req.Node, has not
// terminated, does not use the host's network, and runs as
// req.Workload.ServiceAccount. A refusal is a *certs.DeniedError.
func (a *Authorizer) Authorize(_ context.Context, req certs.SignRequest) error {
	w := req.Workload
	deny := func(r certs.DenyReason, format string, args ...any) error {
		return &certs.DeniedError{Reason: r, Detail: fmt.Sprintf(format, args...)}
	}
	if req.Node == "" {
		return deny(certs.DenyNoNode, "the request names no node")
	}
	a.mu.RLock()
	p, ok := a.pods[podKey{w.Namespace, w.Pod}]
	a.mu.RUnlock()
	switch {
	case !ok:
		return deny(certs.DenyUnknownPod, "no pod %s in the world", w)
	case p.node == "":
		return deny(certs.DenyPodOnOtherNode, "pod %s is not scheduled on any node, node %s asked", w, req.Node)
	case p.node != req.Node:
		return deny(certs.DenyPodOnOtherNode, "pod %s runs on node %s, not on node %s", w, p.node, req.Node)
	case p.phase == "Succeeded" || p.phase == "Failed":
		return deny(certs.DenyPodNotRunning, "pod %s has terminated (phase %s)", w, p.phase)
	case p.hostNetwork:
		return deny(certs.DenyHostNetwork, "pod %s uses the host's network", w)
	case p.serviceAccount != w.ServiceAccount:
		return deny(certs.DenyWrongServiceAccount, "pod %s runs as service account %q, not %q", w, p.serviceAccount, w.ServiceAccount)
	}
	return nil
}
