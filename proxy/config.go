package proxy

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Config configures a proxy.
type Config struct {
	NodeID       string        // xDS node ID (the agent serves config per node)
	Cluster      string        // xDS node cluster, informational
	XDSAddress   string        // unix:///path or host:port of the agent's ADS server
	AdminAddress string        // host:port of /config_dump, /ready, /stats; "" disables
	DrainTimeout time.Duration // how long draining connections get to finish
	// Reconnect backoff after the ADS stream fails.
	BackoffMin, BackoffMax time.Duration
	// AccessLog receives the access log lines of HCMs that ask for the
	// stdout logger; nil means os.Stdout.
	AccessLog io.Writer
	// GRPCClusters are the clusters Envoy's bootstrap would define
	// statically for gRPC services that configuration names by
	// envoy_grpc.cluster_name (Envoy accepts only static clusters there):
	// cluster name → unix:///path or host:port. DefaultAccessLogCluster
	// is XDSAddress unless set: the agent serves its access log service
	// on its xDS socket, as `meshctl envoy bootstrap` tells Envoy.
	GRPCClusters map[string]string
	// AccessLogQueue bounds the entries each gRPC access log holds while
	// its service is slow or away; beyond it entries are dropped (and
	// counted), never waited for.
	AccessLogQueue int
	// SVIDVerifier checks peer certificates of TLS connections; nil:
	// X509SVIDVerifier.
	SVIDVerifier SVIDVerifier
}

// DefaultAccessLogCluster is the name of the bootstrap cluster of the
// agent's access log service.
const DefaultAccessLogCluster = "nodemesh-als"

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.XDSAddress == "" && c.NodeID != "" {
		c.XDSAddress = "unix:///run/nodemesh/" + c.NodeID + "/xds.sock"
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = 250 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		// The agent is local: reconnecting is cheap, and while the
		// proxy is away after an agent restart the agent holds back.
		c.BackoffMax = 2 * time.Second
	}
	if _, ok := c.GRPCClusters[DefaultAccessLogCluster]; !ok && c.XDSAddress != "" {
		c.GRPCClusters = maps.Clone(c.GRPCClusters)
		if c.GRPCClusters == nil {
			c.GRPCClusters = map[string]string{}
		}
		c.GRPCClusters[DefaultAccessLogCluster] = c.XDSAddress
	}
	if c.AccessLogQueue == 0 {
		c.AccessLogQueue = 4096
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("--node-id is required: the control plane serves configuration per node"))
	}
	if c.XDSAddress == "" {
		errs = append(errs, errors.New("--xds-address is required"))
	} else if err := checkGRPCTarget(c.XDSAddress); err != nil {
		errs = append(errs, fmt.Errorf("--xds-address %w", err))
	}
	for _, name := range slices.Sorted(maps.Keys(c.GRPCClusters)) {
		if name == "" {
			errs = append(errs, errors.New("--grpc-cluster: empty cluster name"))
		} else if err := checkGRPCTarget(c.GRPCClusters[name]); err != nil {
			errs = append(errs, fmt.Errorf("--grpc-cluster %s=%w", name, err))
		}
	}
	if c.AccessLogQueue < 1 {
		errs = append(errs, fmt.Errorf("--access-log-queue %d: must be at least 1", c.AccessLogQueue))
	}
	if c.AdminAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdminAddress); err != nil {
			errs = append(errs, fmt.Errorf("--admin-address %q: %w", c.AdminAddress, err))
		}
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, errors.New("--drain-timeout must not be negative"))
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("xDS backoff: want 0 < min (%s) <= max (%s)", c.BackoffMin, c.BackoffMax))
	}
	return errors.Join(errs...)
}

// checkGRPCTarget accepts what the gRPC client dials: unix:///path or
// host:port.
func checkGRPCTarget(target string) error {
	if strings.HasPrefix(target, "unix:") {
		u, err := url.Parse(target)
		if err != nil || (u.Path == "" && u.Opaque == "") {
			return fmt.Errorf("%q: want unix:///path/to/socket", target)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return fmt.Errorf("%q: want unix:///path or host:port: %w", target, err)
	}
	return nil
}

// BindFlags binds the configuration to command-line flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "xDS node ID (the node name)")
	fs.StringVar(&c.Cluster, "node-cluster", c.Cluster, "xDS node cluster (informational)")
	fs.StringVar(&c.XDSAddress, "xds-address", c.XDSAddress, "the agent's ADS server: unix:///path or host:port (default unix:///run/nodemesh/<node-id>/xds.sock)")
	fs.StringVar(&c.AdminAddress, "admin-address", "127.0.0.1:15000", "admin endpoint (/config_dump, /ready, /stats); empty disables")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 30*time.Second, "how long connections of removed or changed listeners get to finish")
	fs.StringToStringVar(&c.GRPCClusters, "grpc-cluster", c.GRPCClusters, "static cluster for gRPC services such as the access log service, as NAME=unix:///path or NAME=host:port; repeatable")
	fs.Lookup("grpc-cluster").DefValue = DefaultAccessLogCluster + "=<xds-address>"
	fs.IntVar(&c.AccessLogQueue, "access-log-queue", 4096, "access log entries held per gRPC access log while its service is slow or away; more are dropped and counted")
}
