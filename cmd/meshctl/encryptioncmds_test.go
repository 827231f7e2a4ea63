package main

import (
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
)

func TestPrintEncryption(t *testing.T) {
	now := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	st := &agent.EncryptionStatus{Node: "node-1", Enabled: true, Interface: "nm_wg0", Kind: "userspace", PublicKey: "pub1=", ListenPort: 51871,
		Endpoint: "192.168.10.1:51871", Missing: []string{"node-3"},
		Peers: []agent.TunnelPeerInfo{
			{Node: "node-2", PublicKey: "pub2=", Endpoint: "192.168.10.2:51871", AllowedIPs: []string{"10.0.2.0/24"}, LastHandshake: now.Add(-42 * time.Second), RxBytes: 1536, TxBytes: 3 << 20},
			{Node: "node-4", PublicKey: "pub4=", Endpoint: "192.168.10.4:51871", AllowedIPs: []string{"10.0.4.0/24"}},
		}}
	var b strings.Builder
	if err := printEncryption(&b, st, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Device:     nm_wg0 (userspace), listening on UDP 51871, published endpoint 192.168.10.1:51871",
		"No key yet: node-3",
		"node-2  192.168.10.2:51871  10.0.2.0/24  42s ago",
		"1.5 KiB", "3.0 MiB", "never",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	if err := printEncryption(&b, &agent.EncryptionStatus{Node: "node-1"}, now); err != nil || !strings.Contains(b.String(), "encryption between nodes is off") {
		t.Errorf("disabled: %q %v", b.String(), err)
	}
}
