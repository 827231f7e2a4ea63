package wireguard

import (
	"net/netip"
	"testing"
	"time"
)

// TestFallback: the main table routes the other node's pod CIDR over the
// underlay in plaintext (as a cluster without encryption does). With the
// CIDR as fallback, a pod connection to it fails while the node has no
// peer, goes through the tunnel once it has one, and fails again — instead
// of leaking over the main route — once the device is gone (a userspace
// device's process restarting): the capture never shows the payload.
func TestFallback(t *testing.T) {
	requireNetnsRoot(t, "to create network namespaces and TUN devices")
	tn, a, b := newNodes(t)
	run(t, "ip", "netns", "exec", tn.a, "ip", "route", "add", "10.77.2.0/24", "via", "192.168.77.2")
	run(t, "ip", "netns", "exec", tn.b, "ip", "route", "add", "10.77.1.0/24", "via", "192.168.77.1")
	echoServer(t, tn.b, "10.77.2.1:7000")
	if err := a.dev.SetFallback([]netip.Prefix{b.pod}); err != nil {
		t.Fatal(err)
	}
	secret := []byte("fallback-payload-" + tn.id)
	capt := startCapture(t, tn.a, "veth0")
	try := func(what string, want bool) {
		t.Helper()
		c, err := dial(tn.a, "10.77.1.1", "10.77.2.1:7000", 2*time.Second)
		if err == nil {
			err = echo(c, secret, 2*time.Second)
			c.Close()
		}
		if (err == nil) != want {
			t.Errorf("%s: echo error %v, want success %v", what, err, want)
		}
	}
	try("no peer yet", false)
	setPeers(t, a, b.peer())
	setPeers(t, b, a.peer())
	waitHandshake(t, a, b)
	try("peer known", true)
	// The device's route and, behind it, the blackhole (no link).
	if got := tableRoutes(t, a); !equal(got, []string{"10.77.2.0/24 dev " + a.iface, "10.77.2.0/24 dev ?"}) {
		t.Errorf("table routes %v: want the device's route and the blackhole", got)
	}
	if err := a.dev.Close(); err != nil {
		t.Fatal(err)
	}
	try("device gone", false)
	if n := countContaining(capt.stop(), secret); n != 0 {
		t.Errorf("the underlay carried the payload in plaintext %d times", n)
	}
}
