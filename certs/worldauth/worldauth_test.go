package worldauth_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

type podOpt func(*api.Pod)

func makePod(ns, name, node string, opts ...podOpt) api.Pod {
	p := api.Pod{Metadata: api.ObjectMeta{Namespace: ns, Name: name}, Spec: api.PodSpec{NodeName: node, ServiceAccountName: "web"}}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func withSA(sa string) podOpt    { return func(p *api.Pod) { p.Spec.ServiceAccountName = sa } }
func withPhase(ph string) podOpt { return func(p *api.Pod) { p.Status.Phase = ph } }
func withHostNetwork() podOpt    { return func(p *api.Pod) { p.Spec.HostNetwork = true } }
func withLegacySA(sa string) podOpt {
	return func(p *api.Pod) { p.Spec.ServiceAccountName, p.Spec.ServiceAccount = "", sa }
}

func TestAuthorize(t *testing.T) {
	world := &api.World{Pods: []api.Pod{
		makePod("prod", "web-1", "node-a"),
		makePod("prod", "plain", "node-a", withSA("")),
		makePod("prod", "legacy", "node-a", withLegacySA("web")),
		makePod("prod", "web-b", "node-b"),
		makePod("prod", "pending", ""),
		makePod("prod", "done", "node-a", withPhase("Succeeded")),
		makePod("prod", "crashed", "node-a", withPhase("Failed")),
		makePod("prod", "starting", "node-a", withPhase("Pending")),
		makePod("prod", "hostnet", "node-a", withHostNetwork()),
		makePod("staging", "web-2", "node-a"),
	}}
	a := worldauth.New(world)
	tests := []struct {
		name string
		node string
		w    certs.Workload
		want certs.DenyReason // "" = allowed
		msg  string
	}{
		{name: "own pod", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}},
		{name: "pod still starting", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "starting", ServiceAccount: "web"}},
		{name: "default service account", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "plain", ServiceAccount: "default"}},
		{name: "deprecated serviceAccount field", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "legacy", ServiceAccount: "web"}},
		{name: "unknown pod", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "ghost", ServiceAccount: "web"}, want: certs.DenyUnknownPod, msg: "no pod prod/ghost"},
		{name: "same name in another namespace", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "web-2", ServiceAccount: "web"}, want: certs.DenyUnknownPod},
		{name: "pod on another node", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "web-b", ServiceAccount: "web"}, want: certs.DenyPodOnOtherNode, msg: "runs on node node-b, not on node node-a"},
		{name: "pod not scheduled", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "pending", ServiceAccount: "web"}, want: certs.DenyPodOnOtherNode, msg: "not scheduled"},
		{name: "wrong service account", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "admin"}, want: certs.DenyWrongServiceAccount, msg: `runs as service account "web", not "admin"`},
		{name: "succeeded pod", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "done", ServiceAccount: "web"}, want: certs.DenyPodNotRunning},
		{name: "failed pod", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "crashed", ServiceAccount: "web"}, want: certs.DenyPodNotRunning, msg: "phase Failed"},
		{name: "host network pod", node: "node-a", w: certs.Workload{Namespace: "prod", Pod: "hostnet", ServiceAccount: "web"}, want: certs.DenyHostNetwork},
		{name: "no node", node: "", w: certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}, want: certs.DenyNoNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.Authorize(context.Background(), certs.SignRequest{Node: tt.node, Workload: tt.w})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var d *certs.DeniedError
			if !errors.As(err, &d) || d.Reason != tt.want {
				t.Fatalf("error %v, want reason %s", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "denied: "+string(tt.want)+": ") || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q, want reason %s and %q", err, tt.want, tt.msg)
			}
		})
	}
}

func TestSetWorld(t *testing.T) {
	a := worldauth.New(nil)
	req := certs.SignRequest{Node: "node-a", Workload: certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}}
	if err := a.Authorize(context.Background(), req); err == nil {
		t.Fatal("allowed with an empty world")
	}
	a.SetWorld(&api.World{Pods: []api.Pod{makePod("prod", "web-1", "node-a")}})
	if err := a.Authorize(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	a.SetWorld(&api.World{Pods: []api.Pod{makePod("prod", "web-1", "node-b")}}) // rescheduled
	if err := a.Authorize(context.Background(), req); err == nil {
		t.Fatal("allowed after the pod moved away")
	}
}
