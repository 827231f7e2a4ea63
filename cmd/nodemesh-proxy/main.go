// Command nodemesh-proxy is Nodemesh's embedded L7 proxy: an xDS client
// that serves the listeners, RBAC filters, routes and clusters the node's
// agent sends it, with Envoy's semantics for that subset (see package
// proxy).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/proxy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nodemesh-proxy:", err)
		os.Exit(1)
	}
}

func newCmd() *cobra.Command {
	var cfg proxy.Config
	var debug bool
	c := &cobra.Command{
		Use:   "nodemesh-proxy --node-id NODE [--xds-address unix:///run/nodemesh/NODE/xds.sock]",
		Short: "Serve the node's L7 policy as the agent configures it over xDS",
		Long: `nodemesh-proxy is the node's L7 proxy when Envoy is not used. It
connects to the agent's ADS server, applies listeners, HTTP RBAC filters,
routes and ORIGINAL_DST/STATIC clusters with Envoy's semantics, and NACKs
every resource or field it does not implement (keeping its last good
configuration). Transparent listeners and upstream connections from the
client's address (original_src) need CAP_NET_ADMIN.

Between node proxies it speaks mTLS as Envoy would with the same
configuration: the tls_inspector, filter chains matched on TLS and ALPN
with a DownstreamTlsContext, clusters with an UpstreamTlsContext, and the
workloads' X.509-SVIDs and trust bundles as SDS secrets on the same ADS
stream. Peers are verified as X.509-SVIDs; refused handshakes are logged
with their reason and counted in /stats; /config_dump never shows a
private key.

The access log (one JSON line per request) goes to stdout for the HTTP
connection managers that configure envoy.access_loggers.stdout. Those that
configure envoy.access_loggers.http_grpc stream their entries to a static
gRPC cluster, as Envoy's bootstrap defines them: --grpc-cluster, by
default nodemesh-als on the xDS address (the agent serves both). Entries
that find the agent slow or away beyond --access-log-queue are dropped,
never waited for.`,
		Example:       `  nodemesh-proxy --node-id node-1 --admin-address 127.0.0.1:15000`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		RunE: func(*cobra.Command, []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", cfg.NodeID)
			cfg.Defaults()
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return proxy.New(cfg, log).Run(ctx)
		},
	}
	cfg.BindFlags(c.Flags())
	c.Flags().BoolVar(&debug, "debug", false, "debug logging")
	return c
}
