package bpf

import "testing"

// TestEncryptionUnavailable: while the ipcache marks a remote pod's node as
// having no WireGuard peer (encryption on, key not known yet), everything
// the local pods send it is dropped as encryption-unavailable, whatever the
// protocol and even when the policy allows it — never sent in plaintext;
// traffic it sends here, local traffic and a denied flow keep their own
// verdicts; once the node has a peer, the same flow passes.
func TestEncryptionUnavailable(t *testing.T) {
	s := newScenario(t)
	cache := s.eng.IPCache("node-1")
	for i := range cache {
		cache[i].NoTunnel = cache[i].RemotePod
	}
	if err := s.d.SyncIPCache(cache); err != nil {
		t.Fatal(err)
	}
	evs := s.expect("other -> remote TCP", egress, s.tcp("other", "remote", 5001, 80, tcpSYN), false, ReasonEncryptionUnavailable)
	if len(evs) != 1 || evs[0].Verdict != Dropped {
		t.Errorf("events %+v: want one drop", evs)
	}
	s.expect("other -> remote UDP", egress, s.udp("other", "remote", 5002, 53), false, ReasonEncryptionUnavailable)
	s.expect("remote -> server (arriving, decided by policy)", ingress, s.tcp("remote", "server", 5003, 80, tcpSYN), true, ReasonAllowed)
	s.expect("other -> server, same node", egress, s.tcp("other", "server", 5004, 80, tcpSYN), true, ReasonNoPolicy)

	for i := range cache {
		cache[i].NoTunnel = false
	}
	if err := s.d.SyncIPCache(cache); err != nil {
		t.Fatal(err)
	}
	s.expect("other -> remote TCP, peer known", egress, s.tcp("other", "remote", 5005, 80, tcpSYN), true, ReasonNoPolicy)
}
