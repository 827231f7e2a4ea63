package identity_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nodemesh/nodemesh/identity"
)

func TestForPod(t *testing.T) {
	ls := identity.ForPod(map[string]string{"app": "web", "pod-template-hash": "abc"}, "prod", map[string]string{"team": "a"}, "web-sa")
	want := "k8s:app=web,k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod,k8s:io.cilium.k8s.namespace.labels.team=a," +
		"k8s:io.cilium.k8s.policy.cluster=default,k8s:io.cilium.k8s.policy.serviceaccount=web-sa,k8s:io.kubernetes.pod.namespace=prod"
	if got := ls.String(); got != want {
		t.Fatalf("labels\n got %s\nwant %s", got, want)
	}
	if !ls.IsPod() {
		t.Fatal("IsPod false for a pod")
	}
	if v, ok := ls.Get("", "app"); !ok || v != "web" {
		t.Fatalf("Get(any, app) = %q, %v", v, ok)
	}
	if _, ok := ls.Get(identity.SourceReserved, "app"); ok {
		t.Fatal("Get with the wrong source matched")
	}
	// Rollout labels do not split identities.
	other := identity.ForPod(map[string]string{"app": "web", "pod-template-hash": "def"}, "prod", map[string]string{"team": "a"}, "web-sa")
	if other.String() != ls.String() {
		t.Fatal("pod-template-hash changed the identity labels")
	}
}

func TestMemoryAllocator(t *testing.T) {
	ctx := context.Background()
	a := identity.NewMemoryAllocator()
	web := identity.ForPod(map[string]string{"app": "web"}, "x", nil, "default")
	db := identity.ForPod(map[string]string{"app": "db"}, "x", nil, "default")
	id1, _ := a.Allocate(ctx, web)
	id2, _ := a.Allocate(ctx, web)
	id3, _ := a.Allocate(ctx, db)
	if id1 != id2 || id1 == id3 || id1 < identity.MinAllocated {
		t.Fatalf("ids %d %d %d", id1, id2, id3)
	}
	if ls, ok := a.Lookup(id1); !ok || ls.String() != web.String() {
		t.Fatal("Lookup lost the labels")
	}
	if err := a.Release(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup(id1); !ok {
		t.Fatal("released while a reference remained")
	}
	if err := a.Release(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup(id1); ok {
		t.Fatal("still allocated after the last release")
	}
	if err := a.Release(ctx, id1); !errors.Is(err, identity.ErrUnknownIdentity) {
		t.Fatalf("double release: %v", err)
	}
	if ls, ok := a.Lookup(identity.RemoteNodeKubeAPIServer); !ok || ls.String() != "reserved:kube-apiserver,reserved:remote-node" {
		t.Fatalf("reserved labels: %v", ls)
	}
	if _, err := a.Allocate(ctx, nil); err == nil {
		t.Fatal("empty label set allocated")
	}
}

func TestSPIFFEID(t *testing.T) {
	if got := identity.SPIFFEID("cluster.local", "prod", "web"); got != "spiffe://cluster.local/ns/prod/sa/web" {
		t.Fatal(got)
	}
}

func TestParseSPIFFEID(t *testing.T) {
	td, ns, sa, err := identity.ParseSPIFFEID(identity.SPIFFEID("cluster.local", "default", "frontend"))
	if err != nil || td != "cluster.local" || ns != "default" || sa != "frontend" {
		t.Fatalf("round trip: %q %q %q %v", td, ns, sa, err)
	}
	for _, bad := range []string{
		"", "spiffe://td", "spiffe://td/ns/a", "spiffe://td/ns/a/sa/", "spiffe:///ns/a/sa/b",
		"spiffe://td/ns/a/sa/b/c", "spiffe://td/x/a/sa/b", "spiffe://td:443/ns/a/sa/b", "spiffe://td/ns/a/sa/b?x=1",
		"https://td/ns/a/sa/b", "spiffe://user@td/ns/a/sa/b",
	} {
		if _, _, _, err := identity.ParseSPIFFEID(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}
