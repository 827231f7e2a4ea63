package vcluster_test

import (
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/tests/vcluster"
)

func TestConfigDefaults(t *testing.T) {
	var c vcluster.Config
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []vcluster.NodeConfig{
		{Name: "node-1", PodCIDR: "10.0.1.0/24", IP: "192.168.10.1"},
		{Name: "node-2", PodCIDR: "10.0.2.0/24", IP: "192.168.10.2"},
	}
	if len(c.Nodes) != 2 || c.Nodes[0] != want[0] || c.Nodes[1] != want[1] {
		t.Errorf("nodes %+v, want %+v", c.Nodes, want)
	}
	if !strings.HasPrefix(c.Name, "nm-") || c.UnderlayCIDR != "192.168.10.0/24" {
		t.Errorf("name %q underlay %q", c.Name, c.UnderlayCIDR)
	}
	var d vcluster.Config
	d.Defaults()
	if d.Name == c.Name {
		t.Errorf("two default names are both %q", c.Name)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     vcluster.Config
		wantErr string
	}{
		{"ok", vcluster.Config{Name: "t1"}, ""},
		{"underscore in name", vcluster.Config{Name: "a_b"}, `name "a_b"`},
		{"name too long", vcluster.Config{Name: strings.Repeat("a", 25)}, "at most 24"},
		{"duplicate node", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n"}, {Name: "n"}}}, "used twice"},
		{"overlapping pod CIDRs", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{
			{Name: "n1", PodCIDR: "10.0.0.0/16"}, {Name: "n2", PodCIDR: "10.0.1.0/24"}}}, "overlaps node"},
		{"pod CIDR not a network", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n1", PodCIDR: "10.0.1.1/24"}}}, "network address"},
		{"pod CIDR in the underlay", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n1", PodCIDR: "192.168.10.0/28"}}}, "overlaps the underlay"},
		{"IPv6 pod CIDR", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n1", PodCIDR: "fd00::/64"}}}, "not an IPv4 network"},
		{"node IP outside underlay", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n1", IP: "10.9.9.9"}}}, "not a host address of the underlay"},
		{"node IP is broadcast", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n1", IP: "192.168.10.255"}}}, "not a host address"},
		{"node IPs clash", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "n1", IP: "192.168.10.5"}, {Name: "n2", IP: "192.168.10.5"}}}, `node "n1"'s too`},
		{"bad node name", vcluster.Config{Name: "t", Nodes: []vcluster.NodeConfig{{Name: "Node_1"}}}, "DNS-1123"},
		{"bad namespace label key", vcluster.Config{Name: "t", NamespaceLabels: map[string]map[string]string{"A": nil}}, `"A" is not a DNS-1123 label`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Defaults()
			err := cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want %q", err, tc.wantErr)
			}
		})
	}
}
