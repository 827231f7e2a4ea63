package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/agent"
)

func newEncryptionCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "encryption",
		Short: "Transparent WireGuard encryption between nodes",
		Long: `Transparent WireGuard encryption between nodes: each agent makes its node's
key pair, publishes the public key, and keeps a peer per node that published
one, allowed that node's pod CIDRs. Pod traffic to a node without a peer is
dropped (reason encryption-unavailable), never sent in plaintext.`,
		Args: cobra.NoArgs,
	}
	c.AddCommand(newEncryptionStatusCmd(), newRotateKeyCmd())
	return c
}

func newRotateKeyCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "rotate-key",
		Short: "Give a node a new WireGuard key pair and publish its public key",
		Long: `Give a node a new WireGuard key pair: the private key is stored (0600) and
used at once, the public key published for the other nodes. Sessions with
the old key end; each peer handshakes again as soon as it reads the new key
(within its agent's --resync interval), and established TCP connections
carry on after retransmitting that gap.`,
		Example: `  meshctl encryption rotate-key --node node-1`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.call(c.Context(), func(ctx context.Context, cl *agent.Client) error {
				res, err := cl.RotateEncryptionKey(ctx)
				if err != nil {
					return fmt.Errorf("ask the agent: %w", err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), res)
				}
				fmt.Fprintf(c.OutOrStdout(), "Node %s: new WireGuard public key %s (was %s), published\n", res.Node, res.PublicKey, res.OldPublicKey)
				return nil
			})
		},
	}
	f.bind(c)
	return c
}

func newEncryptionStatusCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show a node's WireGuard device and peers: endpoints, last handshake, bytes each way",
		Example: `  meshctl encryption status --node node-1
  meshctl encryption status --node node-1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.call(c.Context(), func(ctx context.Context, cl *agent.Client) error {
				st, err := cl.Encryption(ctx)
				if err != nil {
					return fmt.Errorf("ask the agent: %w", err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), st)
				}
				return printEncryption(c.OutOrStdout(), st, time.Now())
			})
		},
	}
	f.bind(c)
	return c
}

func printEncryption(w io.Writer, st *agent.EncryptionStatus, now time.Time) error {
	if !st.Enabled {
		fmt.Fprintf(w, "Node %s: encryption between nodes is off (nodemesh-agent --encryption wireguard turns it on)\n", st.Node)
		return nil
	}
	fmt.Fprintf(w, "Node:       %s\n", st.Node)
	fmt.Fprintf(w, "Device:     %s (%s), listening on UDP %d, published endpoint %s\n", st.Interface, st.Kind, st.ListenPort, st.Endpoint)
	fmt.Fprintf(w, "Public key: %s\n", st.PublicKey)
	if len(st.Missing) > 0 {
		fmt.Fprintf(w, "No key yet: %s — their pods are unreachable from here (encryption-unavailable) until they publish one\n", strings.Join(st.Missing, ", "))
	}
	if st.Problem != "" {
		fmt.Fprintf(w, "Problem:    %s\n", st.Problem)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tENDPOINT\tALLOWED IPS\tLAST HANDSHAKE\tRECEIVED\tSENT\tPUBLIC KEY")
	for _, p := range st.Peers {
		hs := "never"
		if !p.LastHandshake.IsZero() {
			hs = fmt.Sprintf("%s ago", now.Sub(p.LastHandshake).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Node, p.Endpoint, strings.Join(p.AllowedIPs, ","), hs,
			byteSize(p.RxBytes), byteSize(p.TxBytes), p.PublicKey)
	}
	return tw.Flush()
}

// byteSize prints n bytes in binary units (KiB, MiB, ...), one decimal.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
