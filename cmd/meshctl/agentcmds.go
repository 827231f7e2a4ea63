package main

// Commands that ask a node's agent over its local API: status, endpoints,
// observe.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/agent"
)

// agentFlags select the agent to talk to and the output format.
type agentFlags struct {
	node, socket, output string
	formats              []string // the output formats the command has; the first is the default
	timeout              time.Duration
}

func (f *agentFlags) bind(c *cobra.Command, formats ...string) {
	if len(formats) == 0 {
		formats = []string{"text", "json"}
	}
	f.formats = formats
	c.Flags().StringVar(&f.node, "node", "", "the node whose agent to ask (its socket is /run/nodemesh/<node>/agent.sock)")
	c.Flags().StringVar(&f.socket, "socket", "", "the agent's API socket (default: --node's, or the only agent on this machine)")
	c.Flags().StringVarP(&f.output, "output", "o", formats[0], "output format: "+strings.Join(formats, " or "))
	c.Flags().DurationVar(&f.timeout, "timeout", 10*time.Second, "give up waiting for the agent after this long")
}

// socketPath resolves --socket / --node / the only agent running here.
func (f *agentFlags) socketPath() (string, error) {
	switch {
	case f.socket != "":
		return f.socket, nil
	case f.node != "":
		return filepath.Join("/run/nodemesh", f.node, "agent.sock"), nil
	}
	socks, _ := filepath.Glob("/run/nodemesh/*/agent.sock")
	switch len(socks) {
	case 0:
		return "", errors.New("no agent socket under /run/nodemesh: is an agent running on this machine? (or give --socket)")
	case 1:
		return socks[0], nil
	}
	var nodes []string
	for _, s := range socks {
		nodes = append(nodes, filepath.Base(filepath.Dir(s)))
	}
	return "", fmt.Errorf("several agents run here (%s): choose one with --node", strings.Join(nodes, ", "))
}

func (f *agentFlags) dial() (*agent.Client, error) {
	if !slices.Contains(f.formats, f.output) {
		return nil, fmt.Errorf("--output %q: use %s", f.output, strings.Join(f.formats, " or "))
	}
	path, err := f.socketPath()
	if err != nil {
		return nil, err
	}
	return agent.Dial(path)
}

// call dials the agent and runs fn with a context bounded by --timeout.
func (f *agentFlags) call(parent context.Context, fn func(context.Context, *agent.Client) error) error {
	cl, err := f.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(parent, f.timeout)
	defer cancel()
	return fn(ctx, cl)
}

func newStatusCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show an agent's health, what it enforces and its datapath counters",
		Long: `Show the health of a node's agent: whether its last input loaded, how many
policies, endpoints and identities it enforces, how long its last change
took to reach the datapath, how full its BPF maps are, and its packet
counters by direction, verdict and reason.`,
		Example: `  meshctl status --node node-1
  meshctl status --socket /run/nodemesh/node-1/agent.sock -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.call(c.Context(), func(ctx context.Context, cl *agent.Client) error {
				st, err := cl.Status(ctx)
				if err != nil {
					return fmt.Errorf("ask the agent: %w", err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), st)
				}
				return printStatus(c.OutOrStdout(), st)
			})
		},
	}
	f.bind(c)
	return c
}

func printStatus(w io.Writer, st *agent.Status) error {
	health := "healthy"
	if !st.Healthy {
		health = "NOT healthy"
	}
	fmt.Fprintf(w, "Node:        %s (%s)\n", st.Node, health)
	fmt.Fprintf(w, "Agent:       %s, %s mode\n", st.Version, st.Mode)
	fmt.Fprintf(w, "Input:       %s: generation %d, read %s\n", st.Source, st.Generation, st.LastLoad.Format(time.RFC3339))
	if st.LastError != "" {
		fmt.Fprintf(w, "Input error: the last input was refused; the previous state stays in force:\n  %s\n", strings.ReplaceAll(st.LastError, "\n", "\n  "))
	}
	fmt.Fprintf(w, "Enforcing:   %d policies, %d local endpoints, %d identities\n", st.Policies, st.Endpoints, st.Identities)
	fmt.Fprintf(w, "Reconcile:   last change reached the datapath in %s\n", st.Reconcile.Round(time.Microsecond))
	fmt.Fprintf(w, "Proxy:       %s\n", proxyLine(st))
	fmt.Fprintf(w, "mTLS:        %s\n", mtlsLine(st.MTLS))
	for _, p := range st.Problems {
		fmt.Fprintf(w, "Problem:     %s\n", p)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nMAP\tENTRIES\tMAX")
	for _, m := range st.Maps {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", m.Name, m.Entries, m.MaxEntries)
	}
	fmt.Fprintln(tw, "\nDIRECTION\tVERDICT\tREASON\tPACKETS\tBYTES")
	sort.Slice(st.Counters, func(i, j int) bool {
		a, b := st.Counters[i], st.Counters[j]
		return a.Direction+a.Verdict+a.Reason < b.Direction+b.Verdict+b.Reason
	})
	for _, x := range st.Counters {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", x.Direction, x.Verdict, x.Reason, x.Packets, x.Bytes)
	}
	return tw.Flush()
}

func newEndpointsCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "endpoints",
		Short: "List a node's endpoints with identity and policy enforcement state",
		Long: `List the pods of a node as its agent enforces them: datapath endpoint ID,
address, numeric identity, host-side interface, state (ready,
waiting-for-interface, error), whether ingress and egress are enforced
(default deny) and by which policies, and the size of the compiled table.`,
		Example: `  meshctl endpoints --node node-1
  meshctl endpoints --node node-1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.call(c.Context(), func(ctx context.Context, cl *agent.Client) error {
				eps, err := cl.Endpoints(ctx)
				if err != nil {
					return fmt.Errorf("ask the agent: %w", err)
				}
				if f.output == "json" {
					return writeJSON(c.OutOrStdout(), eps)
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tPOD\tIP\tIDENTITY\tINTERFACE\tSTATE\tINGRESS\tEGRESS\tENTRIES")
				for _, e := range eps.Endpoints {
					fmt.Fprintf(tw, "%d\t%s/%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\n", e.ID, e.Namespace, e.Name, e.IP, e.Identity, e.Interface, e.State,
						enforcement(e.IngressEnforced, e.IngressPolicies), enforcement(e.EgressEnforced, e.EgressPolicies), e.PolicyEntries)
				}
				return tw.Flush()
			})
		},
	}
	f.bind(c)
	return c
}

func enforcement(enforced bool, policies []string) string {
	switch {
	case len(policies) == 0:
		return "open"
	case enforced:
		return fmt.Sprintf("enforced(%d)", len(policies))
	}
	return fmt.Sprintf("selected(%d)", len(policies))
}

func newObserveCmd() *cobra.Command {
	var f agentFlags
	req := agent.ObserveRequest{}
	c := &cobra.Command{
		Use:   "observe",
		Short: "Show flow events from a node's datapath: who talked to whom, and the verdict",
		Long: `Show the flow events a node's datapath records: every new connection
(forwarded or dropped) and every dropped packet, one line each:

  TIME  SOURCE -> DESTINATION PORT/PROTO  DIRECTION  VERDICT (REASON)

DIRECTION is the policy that decided: egress (the source pod's) or ingress
(the destination pod's). Without --follow it prints the last --last events
and exits; with --follow it keeps printing new events until interrupted.`,
		Example: `  meshctl observe --node node-1 --last 50
  meshctl observe --node node-1 --follow --verdict dropped
  meshctl observe --node node-2 --to-pod default/backend --port 80 -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if req.Verdict != "" && req.Verdict != "forwarded" && req.Verdict != "dropped" {
				return fmt.Errorf("--verdict %q: use forwarded or dropped", req.Verdict)
			}
			for _, p := range []string{req.FromPod, req.ToPod} {
				if p != "" && !strings.Contains(p, "/") {
					return fmt.Errorf("pod %q: write namespace/pod", p)
				}
			}
			cl, err := f.dial()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !req.Follow {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, f.timeout)
				defer cancel()
			} else {
				fmt.Fprintln(c.ErrOrStderr(), "following flow events; Ctrl-C to stop")
			}
			out := c.OutOrStdout()
			err = cl.Observe(ctx, &req, func(e *agent.FlowEvent) error {
				if f.output == "json" {
					return writeJSONLine(out, e)
				}
				_, err := fmt.Fprintln(out, formatEvent(e))
				return err
			})
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("observe: %w", err)
			}
			return nil
		},
	}
	f.bind(c)
	c.Flags().IntVar(&req.Last, "last", 20, "print the last N recorded events first (-1: all)")
	c.Flags().BoolVarP(&req.Follow, "follow", "f", false, "keep printing new events")
	c.Flags().StringVar(&req.Verdict, "verdict", "", "only forwarded, dropped or redirected events (L7 requests: forwarded or dropped)")
	c.Flags().StringVar(&req.FromPod, "from-pod", "", "only events from this pod (namespace/pod)")
	c.Flags().StringVar(&req.ToPod, "to-pod", "", "only events to this pod (namespace/pod)")
	c.Flags().IntVar(&req.Port, "port", 0, "only events to this destination port")
	c.Flags().BoolVar(&req.L7, "l7", false, "only the node proxy's HTTP request events (method, path, status, rule)")
	c.Flags().BoolVar(&req.MTLS, "mtls", false, "only the node proxy's mTLS connection events (peer SPIFFE ID, TLS version, bytes; why a peer was refused)")
	return c
}

func formatEvent(e *agent.FlowEvent) string {
	side := func(p agent.Peer, port uint16) string {
		name := p.IP
		if p.Pod != "" {
			name = p.Namespace + "/" + p.Pod
		}
		if port != 0 {
			return fmt.Sprintf("%s:%d", name, port)
		}
		return name
	}
	line := fmt.Sprintf("%s  %s -> %s %s  %-7s %s (%s)", e.Time.Local().Format("Jan _2 15:04:05.000"),
		side(e.Src, e.SrcPort), side(e.Dst, e.DstPort), e.Proto, e.Direction, strings.ToUpper(e.Verdict), e.Reason)
	if l := e.L7; l != nil {
		status := "no response"
		if l.Status != 0 {
			status = fmt.Sprint(l.Status)
		}
		line += fmt.Sprintf("  %s %s -> %s", l.Method, l.Path, status)
		if l.Rule != "" {
			line += "  rule " + l.Rule
		}
		if l.PeerID != "" {
			line += "  peer " + l.PeerID
		}
	}
	if m := e.MTLS; m != nil {
		if m.PeerID != "" {
			line += "  peer " + m.PeerID
		}
		if m.TLSVersion != "" {
			line += "  " + m.TLSVersion
		}
		if m.BytesIn+m.BytesOut > 0 {
			line += fmt.Sprintf("  %d/%d bytes", m.BytesIn, m.BytesOut)
		}
	}
	return line
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeJSONLine(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// mtlsLine sums up the node's mTLS between node proxies.
func mtlsLine(m agent.MTLSStatus) string {
	if m.Source == "" {
		return m.Mode
	}
	line := fmt.Sprintf("%s (trust domain %s; %d SVIDs, %s)", m.Mode, m.TrustDomain, m.SVIDs, m.Source)
	if len(m.Namespaces) > 0 {
		var ns []string
		for _, n := range slices.Sorted(maps.Keys(m.Namespaces)) {
			ns = append(ns, n+"="+m.Namespaces[n])
		}
		line += "; namespaces " + strings.Join(ns, ", ")
	}
	if m.InboundPort == 0 {
		return line + "; mTLS flows dropped until the proxy ACKs (fail closed)"
	}
	return line + fmt.Sprintf("; mTLS flows to :%d (inbound) and :%d (outbound)", m.InboundPort, m.OutboundPort)
}

// proxyLine says whether L7-covered connections reach the node proxy.
func proxyLine(st *agent.Status) string {
	conn := fmt.Sprintf("%d xDS stream(s)", st.ProxyStreams)
	if st.ProxyStreams == 0 {
		conn = "not connected"
	}
	ack := "not ACKed"
	if st.ProxyAcked {
		ack = "ACKed"
	}
	cfg := st.ProxyConfig
	if cfg == "" {
		cfg = "none"
	}
	redirect := fmt.Sprintf("L7 redirects to :%d (inbound) and :%d (outbound)", st.ProxyInboundPort, st.ProxyOutboundPort)
	if st.ProxyInboundPort == 0 {
		redirect = "L7-covered connections dropped until the proxy ACKs (fail closed)"
	}
	return fmt.Sprintf("%s, config %s %s; %s", conn, cfg, ack, redirect)
}
