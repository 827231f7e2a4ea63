package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/xds"
)

func newEnvoyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "envoy",
		Short: "Inspect the configuration the agent serves to its node's proxy",
		Long: `The agent of each node programs that node's L7 proxy — upstream Envoy, or
nodemesh-proxy — over xDS. These commands show what it serves and how to
point an Envoy at it.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	c.AddCommand(newEnvoyConfigCmd(), newEnvoyBootstrapCmd())
	return c
}

func newEnvoyConfigCmd() *cobra.Command {
	var f agentFlags
	var typ string
	c := &cobra.Command{
		Use:   "config",
		Short: "Print the xDS resources served to a node's proxy, as Envoy's config_dump",
		Long: `Print the listeners, routes, clusters and secrets the node's agent serves to
its proxy, in the format of Envoy's admin /config_dump, with each
resource's version and whether the proxy acknowledged (ACKED) or rejected
(NACKED, with the proxy's error) it. Secrets never include private keys.`,
		Example: `  meshctl envoy config --node node-2
  meshctl envoy config --node node-2 --type listeners -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch typ {
			case "", "listeners", "routes", "clusters", "secrets":
			default:
				return fmt.Errorf("--type %q: use listeners, routes, clusters or secrets", typ)
			}
			var cfg *agent.EnvoyConfig
			err := f.call(c.Context(), func(ctx context.Context, cl *agent.Client) (err error) {
				cfg, err = cl.EnvoyConfig(ctx, typ)
				return err
			})
			if err != nil {
				return fmt.Errorf("ask the agent: %w", err)
			}
			if f.output == "yaml" {
				var v any
				if err := json.Unmarshal(cfg.ConfigDump, &v); err != nil {
					return err
				}
				b, err := yaml.Marshal(v)
				if err != nil {
					return err
				}
				_, err = c.OutOrStdout().Write(b)
				return err
			}
			var v any
			if err := json.Unmarshal(cfg.ConfigDump, &v); err != nil {
				return err
			}
			return writeJSON(c.OutOrStdout(), v)
		},
	}
	f.bind(c, "json", "yaml")
	c.Flags().StringVar(&typ, "type", "", "only this resource type: listeners, routes, clusters or secrets")
	return c
}

func newEnvoyBootstrapCmd() *cobra.Command {
	var node, socket string
	c := &cobra.Command{
		Use:   "bootstrap --node NODE",
		Short: "Print an Envoy bootstrap that takes its configuration from a node's agent",
		Long: `Print the bootstrap (JSON) an upstream Envoy needs to run as a node's proxy:
its node ID, and ADS over the agent's xDS unix socket. Mount the socket into
the Envoy container and start it with 'envoy -c bootstrap.json'.`,
		Example: `  meshctl envoy bootstrap --node node-1 > bootstrap.json`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if node == "" {
				return fmt.Errorf("--node is required: the proxy's node ID is its node's name")
			}
			if socket == "" {
				socket = filepath.Join("/run/nodemesh", node, "xds.sock")
			}
			b, err := xds.Bootstrap(node, socket)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(c.OutOrStdout(), string(b))
			return err
		},
	}
	c.Flags().StringVar(&node, "node", "", "the node whose proxy this is")
	c.Flags().StringVar(&socket, "xds-socket", "", "the agent's xDS socket as the proxy sees it (default /run/nodemesh/<node>/xds.sock)")
	return c
}
