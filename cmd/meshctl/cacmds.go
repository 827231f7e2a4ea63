package main

// Commands that administer the CA server (nodemesh-ca) over its admin
// socket: ca status, ca rotate.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/certs/caserver"
)

// caFlags select the CA server and the output format.
type caFlags struct {
	dir, output string
	timeout     time.Duration
}

func (f *caFlags) bind(c *cobra.Command) {
	c.Flags().StringVar(&f.dir, "ca-socket-dir", caserver.DefaultDir, "the CA server's socket directory (its --socket-dir); meshctl uses admin.sock there")
	c.Flags().StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	c.Flags().DurationVar(&f.timeout, "timeout", 10*time.Second, "give up waiting for the CA after this long")
}

// call dials the CA's admin socket and runs fn with a context bounded by
// --timeout.
func (f *caFlags) call(parent context.Context, fn func(context.Context, *caserver.AdminClient) error) error {
	if !slices.Contains([]string{"text", "json"}, f.output) {
		return fmt.Errorf("--output %q: use text or json", f.output)
	}
	cl, err := caserver.DialAdmin(caserver.AdminSocket(f.dir))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(parent, f.timeout)
	defer cancel()
	return fn(ctx, cl)
}

func newCACmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ca",
		Short: "Show and rotate the roots of the CA server (nodemesh-ca)",
		Long: `nodemesh-ca signs the SVIDs of the node agents; its keys never leave it.
These commands talk to its admin socket, <ca-socket-dir>/admin.sock, which
only the CA's user can open.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	c.AddCommand(newCAStatusCmd(), newCARotateCmd())
	return c
}

func newCAStatusCmd() *cobra.Command {
	var f caFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the CA's roots: states, validity, activation and drop times",
		Long: `Show the roots of the CA server, oldest first, with their state: active
(signs new SVIDs), pending (trusted already, signs from its activation
time) or retiring (trusted until its drop time, signs nothing), their
validity, and when they activate and leave the trust bundle.`,
		Example: `  meshctl ca status
  meshctl ca status --ca-socket-dir /run/nodemesh/ca -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.call(c.Context(), func(ctx context.Context, cl *caserver.AdminClient) error {
				roots, err := cl.Roots(ctx)
				if err != nil {
					return fmt.Errorf("ask the CA: %w", err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), roots)
				}
				return printCARoots(c.OutOrStdout(), roots, time.Now())
			})
		},
	}
	f.bind(c)
	return c
}

func newCARotateCmd() *cobra.Command {
	var f caFlags
	var after time.Duration
	c := &cobra.Command{
		Use:   "rotate",
		Short: "Start a CA rotation: add a root, trusted now, that signs after a delay",
		Long: `Start a CA rotation. The CA generates a new root, which joins the trust
bundle at once and reaches every node's agent; after --activate-after it
signs the new SVIDs. Give the bundle time to reach every node: an SVID of
the new root is refused by nodes that do not have it yet. The root it
replaces stays trusted for the CA's --ca-root-overlap after the new one
activates, so its SVIDs stay valid until they are renewed.`,
		Example: `  meshctl ca rotate
  meshctl ca rotate --ca-socket-dir /run/nodemesh/ca --activate-after 1m`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if after < 0 {
				return fmt.Errorf("--activate-after %s: must not be negative", after)
			}
			return f.call(c.Context(), func(ctx context.Context, cl *caserver.AdminClient) error {
				res, err := cl.RotateRoot(ctx, after)
				if err != nil {
					return fmt.Errorf("rotate: %w", err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), res)
				}
				now := time.Now()
				w := c.OutOrStdout()
				fmt.Fprintf(w, "Added root %s: trusted now, signs from %s (%s)\n\n", res.Added.Serial, res.Added.ActivateAt.Local().Format(time.RFC3339), relTime(res.Added.ActivateAt, now))
				return printCARoots(w, &res.Roots, now)
			})
		},
	}
	f.bind(c)
	c.Flags().DurationVar(&after, "activate-after", 10*time.Second, "the new root signs after this delay; until then it is only trusted")
	return c
}

func printCARoots(w io.Writer, r *caserver.RootsResponse, now time.Time) error {
	fmt.Fprintf(w, "Trust domain:  %s\n", r.TrustDomain)
	fmt.Fprintf(w, "Bundle:        version %d, %d root(s)\n", r.BundleVersion, len(r.Roots))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSERIAL\tSTATE\tACTIVATES\tLEAVES BUNDLE\tNOT BEFORE\tNOT AFTER\tSUBJECT")
	ts := func(t time.Time) string { return t.Local().Format(time.RFC3339) }
	for _, x := range r.Roots {
		drop := "-"
		if x.DropAt != nil {
			drop = ts(*x.DropAt) + " (" + relTime(*x.DropAt, now) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Serial, strings.ToUpper(x.State), ts(x.ActivateAt)+" ("+relTime(x.ActivateAt, now)+")", drop, ts(x.NotBefore), ts(x.NotAfter), x.Subject)
	}
	return tw.Flush()
}

// relTime says how far t is from now: "in 10s", "5m ago".
func relTime(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d > 0:
		return "in " + d.String()
	case d < 0:
		return (-d).String() + " ago"
	}
	return "now"
}
