package main

// Commands that ask a node's agent about its workload identities (mTLS):
// identities, certs. Neither ever shows a private key: the agent does not
// send them.

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/agent"
)

// agentErr words an error of an agent call without gRPC's framing.
func agentErr(err error) error {
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("ask the agent: %s", s.Message())
	}
	return fmt.Errorf("ask the agent: %w", err)
}

func newIdentitiesCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "identities",
		Short: "List a node's workload identities (SPIFFE IDs), their SVIDs and the trust bundle",
		Long: `List the workload identities of a node, as its agent serves them to the
node's proxy for mTLS: one line per SPIFFE ID
(spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>) with

  PODS        the node's pods running as that service account
  SERIAL      the serial number (hex) of the X.509-SVID's leaf certificate
  EXPIRES     when the SVID expires, and how long from now
  RENEWS IN   when the built-in CA's manager renews it (or retries a failed
              request); SPIRE renews on its own schedule
  STATUS      valid; pending (not issued yet); failing (requests fail: the
              errors follow the table); expired (not renewed in time);
              untrusted (its root is not in the trust bundle); missing (a
              local pod's identity the source holds no SVID for)

then the trust bundle: the roots trusted per trust domain. Private keys are
never shown. On a node whose agent runs with --mtls-mode disabled there are
no identities, and the command says so.`,
		Example: `  meshctl identities --node node-1
  meshctl identities --socket /run/nodemesh/node-1/agent.sock -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.call(c.Context(), func(ctx context.Context, cl *agent.Client) error {
				ids, err := cl.Identities(ctx)
				if err != nil {
					return agentErr(err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), ids)
				}
				return printIdentities(c.OutOrStdout(), ids, time.Now())
			})
		},
	}
	f.bind(c)
	return c
}

func printIdentities(w io.Writer, l *agent.IdentityList, now time.Time) error {
	fmt.Fprintf(w, "Node %s: identities from the %s (generation %d)\n\n", l.Node, l.Source, l.Generation)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tPODS\tSERIAL\tEXPIRES\tRENEWS IN\tSTATUS")
	var problems []string
	for _, st := range l.Identities {
		pods, serial, expires := "-", "-", "-"
		if len(st.Pods) > 0 {
			pods = strings.Join(st.Pods, ",")
		}
		if st.HasSVID {
			serial = st.Serial
			expires = st.NotAfter.UTC().Format(time.RFC3339) + " (" + relative(st.NotAfter.Sub(now)) + ")"
		}
		state := st.State
		if st.Failures > 0 {
			state = fmt.Sprintf("%s (%d)", st.State, st.Failures)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.SPIFFEID, pods, serial, expires, renewsIn(st, l.Source), state)
		switch {
		case st.LastError != "":
			problems = append(problems, fmt.Sprintf("%s: %d failed request(s), the last: %s", st.SPIFFEID, st.Failures, st.LastError))
		case st.State == agent.IdentityUntrusted:
			problems = append(problems, fmt.Sprintf("%s: issued by %q, which is not a root of the trust bundle", st.SPIFFEID, st.Issuer))
		case st.State == agent.IdentityMissing:
			problems = append(problems, fmt.Sprintf("%s: the %s holds no SVID for it: the proxy cannot do mTLS for its pods", st.SPIFFEID, l.Source))
		}
	}
	if len(l.Identities) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintf(w, "Problem: %s\n", p)
	}
	fmt.Fprintf(w, "\nTrust bundle (version %d):\n", l.BundleVersion)
	if len(l.Bundle) == 0 {
		fmt.Fprintln(w, "  none yet: the proxy accepts no mTLS peer")
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUST DOMAIN\tROOT\tSERIAL\tEXPIRES")
	for _, td := range l.Bundle {
		for _, r := range td.Roots {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s (%s)\n", td.TrustDomain, r.Subject, r.Serial, r.NotAfter.UTC().Format(time.RFC3339), relative(r.NotAfter.Sub(now)))
		}
	}
	return tw.Flush()
}

func renewsIn(st agent.IdentityStatus, source string) string {
	switch {
	case st.RenewAt.IsZero() && source == agent.SourceSPIRE && st.HasSVID:
		return "by SPIRE"
	case st.RenewAt.IsZero() && st.State == agent.IdentityPending:
		return "now"
	case st.RenewAt.IsZero():
		return "-"
	case st.RenewIn <= 0:
		return "now"
	}
	return approx(st.RenewIn)
}

// relative says d from now: "in 59m", "3m ago".
func relative(d time.Duration) string {
	if d < 0 {
		return "expired " + approx(-d) + " ago"
	}
	return "in " + approx(d)
}

// approx rounds d for people: 45s, 59m, 5h3m, 364d.
func approx(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Round(time.Second)/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		h := int(d / time.Hour)
		if m := int(d%time.Hour) / int(time.Minute); m > 0 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

func newCertsCmd() *cobra.Command {
	var f agentFlags
	var withPEM bool
	c := &cobra.Command{
		Use:   "certs [SPIFFE-ID]",
		Short: "Show the certificate chains of a node's SVIDs, decoded",
		Long: `Show the X.509-SVIDs a node's proxy presents for mTLS: for each SPIFFE ID
(or only the one given) the chain as presented, leaf first, then the root
of the trust bundle that issued it. Each certificate is decoded: subject,
issuer, serial, validity, URI SANs, key usage, extended key usage, whether
it is a CA, signature and public key algorithms, and SHA-256 fingerprint.
--pem adds each certificate's PEM, to feed to openssl. Private keys are
never shown: the agent does not send them.`,
		Example: `  meshctl certs --node node-1
  meshctl certs --node node-1 spiffe://cluster.local/ns/default/sa/backend
  meshctl certs --node node-1 spiffe://cluster.local/ns/default/sa/backend --pem | openssl x509 -noout -text
  meshctl certs --node node-1 -o json`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("%s takes at most one SPIFFE ID, got %d arguments", c.CommandPath(), len(args))
			}
			if len(args) == 1 && !strings.HasPrefix(args[0], "spiffe://") {
				return fmt.Errorf("%q is not a SPIFFE ID: write spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> (see 'meshctl identities')", args[0])
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			req := &agent.CertsRequest{PEM: withPEM}
			if len(args) == 1 {
				req.SPIFFEID = args[0]
			}
			return f.call(c.Context(), func(ctx context.Context, cl *agent.Client) error {
				chains, err := cl.Certs(ctx, req)
				if err != nil {
					return agentErr(err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), chains)
				}
				return printCerts(c.OutOrStdout(), chains, time.Now())
			})
		},
	}
	f.bind(c)
	c.Flags().BoolVar(&withPEM, "pem", false, "add each certificate's PEM (certificates only, never keys)")
	return c
}

func printCerts(w io.Writer, cc *agent.CertChains, now time.Time) error {
	if len(cc.Chains) == 0 {
		_, err := fmt.Fprintf(w, "Node %s holds no SVIDs (source: %s).\n", cc.Node, cc.Source)
		return err
	}
	for i, ch := range cc.Chains {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s (node %s, %s)\n", ch.SPIFFEID, cc.Node, cc.Source)
		for j, ci := range ch.Certificates {
			role := "intermediate CA"
			if j == 0 {
				role = "leaf (SVID)"
			}
			printCert(w, fmt.Sprintf("[%d] %s", j, role), ci, now)
		}
		if ch.Root != nil {
			printCert(w, "root (trust bundle)", *ch.Root, now)
		} else {
			fmt.Fprintln(w, "  root: none of the trust bundle's roots issued this chain")
		}
	}
	return nil
}

func printCert(w io.Writer, title string, ci agent.CertificateInfo, now time.Time) {
	fmt.Fprintf(w, "  %s\n", title)
	line := func(k, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(w, "    %-15s %s\n", k+":", v)
	}
	line("Subject", ci.Subject)
	line("Issuer", ci.Issuer)
	line("Serial", ci.Serial)
	line("Not before", ci.NotBefore.UTC().Format(time.RFC3339))
	line("Not after", ci.NotAfter.UTC().Format(time.RFC3339)+" ("+relative(ci.NotAfter.Sub(now))+")")
	line("URI SANs", strings.Join(ci.URISANs, ", "))
	if len(ci.DNSSANs) > 0 {
		line("DNS SANs", strings.Join(ci.DNSSANs, ", "))
	}
	line("Key usage", strings.Join(ci.KeyUsage, ", "))
	line("Ext key usage", strings.Join(ci.ExtKeyUsage, ", "))
	line("CA", fmt.Sprint(ci.IsCA))
	line("Signature", ci.SignatureAlgorithm)
	line("Public key", ci.PublicKeyAlgorithm)
	line("SHA-256", ci.SHA256)
	if ci.PEM != "" {
		fmt.Fprint(w, ci.PEM)
	}
}
