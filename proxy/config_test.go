package proxy

import (
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults from the node", cfg: Config{NodeID: "node-1"}},
		{name: "tcp xds address", cfg: Config{NodeID: "n", XDSAddress: "127.0.0.1:18000", AdminAddress: "127.0.0.1:15000"}},
		{name: "no node", cfg: Config{}, wantErr: "--node-id is required"},
		{name: "bad xds address", cfg: Config{NodeID: "n", XDSAddress: "xds.sock"}, wantErr: `--xds-address "xds.sock"`},
		{name: "bad admin address", cfg: Config{NodeID: "n", AdminAddress: "15000"}, wantErr: `--admin-address "15000"`},
		{name: "bad drain", cfg: Config{NodeID: "n", DrainTimeout: -1}, wantErr: "--drain-timeout must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Defaults()
			checkErr(t, tc.cfg.Validate(), tc.wantErr)
		})
	}
	c := Config{NodeID: "node-1"}
	c.Defaults()
	if c.XDSAddress != "unix:///run/nodemesh/node-1/xds.sock" {
		t.Errorf("default xds address = %q", c.XDSAddress)
	}
}
