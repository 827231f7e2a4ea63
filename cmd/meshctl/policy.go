package main

import (
	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/cmd/meshctl/internal/policycheck"
)

func newPolicyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Work with network policy: check flows against it",
		Long: `Commands that read a world (namespaces, pods, nodes) and policy documents
(NetworkPolicy, MeshNetworkPolicy, MeshClusterwideNetworkPolicy,
CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy) and answer questions
about them without a cluster.`,
		Example: `  meshctl policy check --world world.yaml --policy policies/ \
      --from default/frontend --to default/backend --port 80`,
		Args: cobra.NoArgs,
		// Runnable, so that "meshctl policy foo" is an error rather than help.
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	c.AddCommand(newPolicyCheckCmd())
	return c
}

func newPolicyCheckCmd() *cobra.Command {
	var o policycheck.Options
	c := &cobra.Command{
		Use:   "check --world FILE --policy PATH (--from SRC --to DST --port PORT | --flows FILE | --matrix)",
		Short: "Say whether flows are allowed by policy, and why",
		Long: `Check flows against policy: for each flow, whether the source's egress policy
and the destination's ingress policy allow it, which policies and rules
decided, and — for HTTP — which L7 rule allowed the request.

Input:
  --world FILE     namespaces, pods and nodes (YAML or JSON, a v1 List is fine,
                   e.g. 'kubectl get namespaces,pods,nodes -A -o yaml');
                   repeatable; a directory reads every .yaml/.yml/.json in it
  --policy PATH    a policy file or a directory of them; repeatable

What to check (exactly one of):
  a single flow    --from SRC --to DST --port PORT [--protocol P]
                   [--method M --path P --host H --header K=V ...]
                   SRC and DST are namespace/pod, node:NAME or an IP address.
                   PORT is a number or a named port of the destination pod.
                   --method/--path/--host/--header add an HTTP request to the
                   flow (method defaults to GET, path to /).
  --flows FILE     JSON Lines, one flow per line ("-" reads standard input):
                     {"from":"x/a","to":"y/b","port":80,"protocol":"TCP",
                      "http":{"method":"GET","path":"/userdata/7","headers":{"k":"v"}}}
                   port is a number or a port name; protocol defaults to TCP;
                   http is optional; blank lines are skipped; unknown fields
                   are errors.
  --matrix         a reachability matrix over every pod of the world for
                   --port (default 80) and --protocol (default TCP):
                   "." allowed, "X" denied.

Output (-o):
  text   (default) a plain-words explanation of each flow
  json   one JSON object for a single flow, an array for --flows; for
         --matrix {"pods","protocol","port","allowed":[[bool]]}
  jsonl  one JSON object per line, one line per input flow, in input order

Every flow is resolved and checked before anything is printed: on bad input
(an unreadable file, an invalid policy, an unknown pod, a bad port) meshctl
prints nothing on standard output, each problem on its own line on standard
error, and exits with status 2. Denied flows exit 0 unless --fail-on-deny is
given (then 1).`,
		Example: `  # One flow, explained
  meshctl policy check --world world.yaml --policy policies/ \
      --from default/frontend --to default/backend --port 80

  # An HTTP request on a named port
  meshctl policy check --world world.yaml --policy policies/ \
      --from default/frontend --to default/backend --port http \
      --method GET --path /userdata/7 --header x-team=a

  # From a node, or from an address outside the cluster
  meshctl policy check --world world.yaml --policy policies/ \
      --from node:node-1 --to kube-system/coredns --port 53 --protocol UDP
  meshctl policy check --world world.yaml --policy policies/ \
      --from 203.0.113.7 --to default/frontend --port 443

  # Many flows, one JSON result per line; exit 1 if any is denied
  meshctl policy check --world world.yaml --policy policies/ \
      --flows flows.jsonl -o jsonl --fail-on-deny

  # Reachability matrix for UDP/53
  meshctl policy check --world world.yaml --policy policies/ \
      --matrix --port 53 --protocol UDP`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.PortSet = c.Flags().Changed("port")
			o.ProtocolSet = c.Flags().Changed("protocol")
			denied, err := policycheck.Run(&o, c.InOrStdin(), c.OutOrStdout())
			if err != nil {
				return err
			}
			if denied && o.FailOnDeny {
				return exitStatus(exitDenied)
			}
			return nil
		},
	}
	f := c.Flags()
	f.SortFlags = false
	f.StringArrayVar(&o.World, "world", nil, "`FILE` or directory with the namespaces, pods and nodes (repeatable; - reads standard input)")
	f.StringArrayVar(&o.Policies, "policy", nil, "policy file or directory `PATH` (repeatable; - reads standard input)")
	f.StringVar(&o.From, "from", "", "source `SRC` of a single flow: namespace/pod, node:NAME or an IP address")
	f.StringVar(&o.To, "to", "", "destination `DST` of a single flow: namespace/pod, node:NAME or an IP address")
	f.StringVar(&o.Port, "port", "", "destination `PORT`: a number or a named port of the destination pod (--matrix: default 80)")
	f.StringVar(&o.Protocol, "protocol", "TCP", "`PROTOCOL`: TCP, UDP, SCTP (ICMP, ICMPv6: --port is the ICMP type)")
	f.StringVar(&o.Method, "method", "", "HTTP request `METHOD` (default GET when any HTTP flag is given)")
	f.StringVar(&o.Path, "path", "", "HTTP request `PATH` (default / when any HTTP flag is given)")
	f.StringVar(&o.Host, "host", "", "HTTP request `HOST`")
	f.StringArrayVar(&o.Headers, "header", nil, "HTTP request header `K=V` (repeatable)")
	f.StringVar(&o.Flows, "flows", "", "JSON Lines `FILE` of flows, one per line (- reads standard input)")
	f.BoolVar(&o.Matrix, "matrix", false, "print the reachability matrix of all pods for --port and --protocol")
	f.StringVarP(&o.Output, "output", "o", "text", "output `FORMAT`: text, json or jsonl")
	f.BoolVar(&o.FailOnDeny, "fail-on-deny", false, "exit with status 1 when any flow is denied")
	f.BoolVar(&o.Reference, "reference", false, "use the reference evaluator instead of the compiled engine")
	return c
}
