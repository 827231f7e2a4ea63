// Command nodemesh-ca is Nodemesh's certificate authority as a service: it
// holds the CA's keys and signs the CSRs of the node agents, which reach it
// on one unix socket per node (see package certs/caserver).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/caserver"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nodemesh-ca:", err)
		os.Exit(1)
	}
}

func newCmd() *cobra.Command {
	cfg := certs.CAConfig{TrustDomain: "cluster.local"}
	var worlds []string
	var dir string
	var resync time.Duration
	var debug bool
	c := &cobra.Command{
		Use:   "nodemesh-ca --world PATH [--socket-dir DIR]",
		Short: "Sign the SVIDs of Nodemesh's node agents; the CA's keys stay here",
		Long: `nodemesh-ca runs Nodemesh's built-in certificate authority for one trust
domain as a service, so that its keys never leave its process. Node agents
generate their workloads' keys themselves and send CSRs; the CA answers
with X.509-SVIDs and streams its trust bundle to them.

Standalone mode: it serves one unix socket per node of the world,
<socket-dir>/nodes/<node>.sock, and the node a request arrives on is the
node that asks: a node gets SVIDs only for the pods the world schedules on
it, with their service accounts. Give each node's agent its own socket
only (mount namespaces, or ownership): agents that can open each other's
sockets can get each other's identities. The world (Namespaces, Nodes,
Pods as 'kubectl get namespaces,nodes,pods -A -o yaml' prints them) is read
from --world and followed: sockets of new nodes appear, those of removed
nodes go away. An invalid change is refused; the last good world stays in
force.

'meshctl ca status' and 'meshctl ca rotate' talk to <socket-dir>/admin.sock.
Without --ca-root-cert/--ca-root-key the CA generates its root at start, so
a restart changes the root and every SVID is renewed.

It logs every SVID issued (node, pod, SPIFFE ID, serial, expiry) and every
refusal with its reason; never a key.`,
		Example: `  nodemesh-ca --world /etc/nodemesh/world
  nodemesh-ca --world world.yaml --socket-dir /run/nodemesh/ca --trust-domain example.org \
      --ca-root-cert root.pem --ca-root-key root-key.pem`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		RunE: func(c *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if len(worlds) == 0 {
				return errors.New("--world is required: the world decides which node may have which identity")
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, cfg, worlds, dir, resync, log)
		},
	}
	c.Flags().StringSliceVar(&worlds, "world", nil, "world file or directory (Namespaces, Nodes, Pods as kubectl prints them); repeatable")
	c.Flags().StringVar(&dir, "socket-dir", caserver.DefaultDir, "directory of the sockets: nodes/<node>.sock for the node agents, admin.sock for meshctl")
	c.Flags().StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain the CA issues for")
	c.Flags().DurationVar(&resync, "resync", 5*time.Second, "reread the world this often even without change notifications")
	c.Flags().BoolVar(&debug, "debug", false, "log at debug level")
	cfg.BindFlags(c.Flags())
	return c
}

// run serves the CA until ctx ends.
func run(ctx context.Context, cfg certs.CAConfig, worlds []string, dir string, resync time.Duration, log *slog.Logger) error {
	authz := worldauth.New(nil)
	cfg.Logger = log.With("component", "ca")
	ca, err := certs.NewCA(cfg, authz)
	if err != nil {
		return err
	}
	srv, err := caserver.New(caserver.Config{Dir: dir, CA: ca, Authorizer: authz, Log: log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	followErr := make(chan error, 1)
	go func() {
		err := srv.FollowWorld(ctx, worlds, resync)
		if err != nil {
			cancel() // no world to follow: stop serving
		}
		followErr <- err
	}()
	runErr := srv.Run(ctx)
	cancel()
	return errors.Join(runErr, <-followErr)
}
