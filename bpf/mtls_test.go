package bpf

import "testing"

// TestMTLSSteering: with a pod's mTLS flags set, an allowed TCP connection
// with a mesh pod on another node is steered to the node proxy — here,
// where no proxy listens, it is dropped as proxy-unavailable with the event
// marked mTLS, with and without proxy ports (never passed in plaintext);
// UDP, same-node pods and pods without the flags are decided as before,
// and so is egress to a remote pod whose node does not accept mTLS (no
// MTLSPeer flag in the ipcache: its mode is disabled).
func TestMTLSSteering(t *testing.T) {
	s := newScenario(t)
	other, server := s.ids["default/other"], s.ids["default/server"]
	set := func(pod string, id uint32, flags EndpointFlags) {
		t.Helper()
		ident, _, _ := s.eng.Identity("default/" + pod)
		if err := s.d.SetEndpoint(s.addr(pod), id, loIndex(t), ident, flags); err != nil {
			t.Fatal(err)
		}
	}
	expectMTLS := func(what string, egress bool, p pkt) {
		t.Helper()
		evs := s.expect(what, egress, p, false, ReasonProxyUnavailable)
		if len(evs) != 1 || !evs[0].MTLS {
			t.Fatalf("%s: events %+v, want one marked mTLS", what, evs)
		}
	}

	// Without flags: the policy alone decides (testdata/policies.yaml lets
	// remote, labelled a client, reach server:80; no policy selects other).
	s.expect("remote -> server, no mTLS", ingress, s.tcp("remote", "server", 4000, 80, tcpSYN), true, ReasonAllowed)
	set("server", server, EndpointMTLSAccept)
	set("other", other, EndpointMTLSOriginate)
	expectMTLS("remote -> server, accept", ingress, s.tcp("remote", "server", 4001, 80, tcpSYN))
	s.expect("remote -> server UDP", ingress, s.udp("remote", "server", 4002, 53), true, ReasonAllowed)
	s.expect("other -> remote, originate, peer does not accept", egress, s.tcp("other", "remote", 4010, 80, tcpSYN), true, ReasonNoPolicy)
	cache := s.eng.IPCache("node-1")
	for i := range cache {
		cache[i].MTLSPeer = cache[i].RemotePod
	}
	if err := s.d.SyncIPCache(cache); err != nil {
		t.Fatal(err)
	}
	expectMTLS("other -> remote, originate", egress, s.tcp("other", "remote", 4003, 80, tcpSYN))
	s.expect("other -> server, same node", egress, s.tcp("other", "server", 4004, 80, tcpSYN), true, ReasonNoPolicy)

	// With ports but no listener: still no plaintext.
	if err := s.d.SetMTLSPorts(15006, 15001); err != nil {
		t.Fatal(err)
	}
	expectMTLS("other -> remote, ports, no proxy", egress, s.tcp("other", "remote", 4005, 80, tcpSYN))
	if err := s.d.SetHairpin(0); err != nil { // keeps the ports
		t.Fatal(err)
	}
	var c datapathNmConfig
	if err := s.d.objs.Config.Lookup(uint32(0), &c); err != nil || c.MtlsInPort != 15006 || c.MtlsOutPort != 15001 {
		t.Fatalf("config after SetHairpin: %+v %v", c, err)
	}
	set("other", other, 0)
	s.expect("other -> remote, flags cleared", egress, s.tcp("other", "remote", 4006, 80, tcpSYN), true, ReasonNoPolicy)
}
