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
		{name: "grpc clusters", cfg: Config{NodeID: "n", GRPCClusters: map[string]string{"als": "unix:///run/als.sock", "remote": "10.0.0.1:9000"}}},
		{name: "bad grpc cluster", cfg: Config{NodeID: "n", GRPCClusters: map[string]string{"als": "als.sock"}}, wantErr: `--grpc-cluster als="als.sock": want unix:///path or host:port`},
		{name: "bad access log queue", cfg: Config{NodeID: "n", AccessLogQueue: -1}, wantErr: "--access-log-queue -1: must be at least 1"},
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
	// The agent's access log service is on its xDS socket unless told
	// otherwise; other gRPC clusters come in addition.
	if c.GRPCClusters[DefaultAccessLogCluster] != c.XDSAddress || c.AccessLogQueue != 4096 {
		t.Errorf("default gRPC clusters %v, queue %d", c.GRPCClusters, c.AccessLogQueue)
	}
	mine := map[string]string{"other": "unix:///other.sock"}
	c = Config{NodeID: "node-1", GRPCClusters: mine}
	c.Defaults()
	if len(c.GRPCClusters) != 2 || c.GRPCClusters[DefaultAccessLogCluster] == "" || len(mine) != 1 {
		t.Errorf("gRPC clusters %v (caller's map %v)", c.GRPCClusters, mine)
	}
}
