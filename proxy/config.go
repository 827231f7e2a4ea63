package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
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
}

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
		c.BackoffMax = 15 * time.Second
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
	} else if strings.HasPrefix(c.XDSAddress, "unix:") {
		u, err := url.Parse(c.XDSAddress)
		if err != nil || (u.Path == "" && u.Opaque == "") {
			errs = append(errs, fmt.Errorf("--xds-address %q: want unix:///path/to/socket", c.XDSAddress))
		}
	} else if _, _, err := net.SplitHostPort(c.XDSAddress); err != nil {
		errs = append(errs, fmt.Errorf("--xds-address %q: want unix:///path or host:port: %w", c.XDSAddress, err))
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

// BindFlags binds the configuration to command-line flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "xDS node ID (the node name)")
	fs.StringVar(&c.Cluster, "node-cluster", c.Cluster, "xDS node cluster (informational)")
	fs.StringVar(&c.XDSAddress, "xds-address", c.XDSAddress, "the agent's ADS server: unix:///path or host:port (default unix:///run/nodemesh/<node-id>/xds.sock)")
	fs.StringVar(&c.AdminAddress, "admin-address", "127.0.0.1:15000", "admin endpoint (/config_dump, /ready, /stats); empty disables")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 30*time.Second, "how long connections of removed or changed listeners get to finish")
}
