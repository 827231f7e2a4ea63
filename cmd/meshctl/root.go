package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time:
//
//	go build -ldflags "-X main.version=v0.3.0" ./cmd/meshctl
var version = "dev"

// Exit statuses.
const (
	exitOK       = 0
	exitDenied   = 1 // --fail-on-deny and a flow was denied
	exitBadUsage = 2 // bad flags or bad input: nothing was printed on stdout
)

// exitStatus is an error that carries only an exit status: the command has
// already said everything it had to.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run executes meshctl with args (without the program name) and returns the
// process exit status. Tests call it in-process.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	msg := strings.TrimRight(err.Error(), "\n")
	fmt.Fprintln(stderr, msg)
	return exitBadUsage
}

func newRootCmd(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "meshctl",
		Short: "meshctl checks Nodemesh policy offline and asks node agents what they enforce",
		Long: `meshctl is the command-line tool of Nodemesh, the sidecarless service mesh.

It answers questions about policy without a cluster: give it the world (the
namespaces, pods and nodes, as 'kubectl get namespaces,pods,nodes -A -o yaml'
prints them) and the policies (Kubernetes NetworkPolicy, Nodemesh
MeshNetworkPolicy / MeshClusterwideNetworkPolicy, or their cilium.io/v2
equivalents), and it says whether a flow is allowed, which policy and rule
decided, and why — the same answer the nodes enforce.

It also asks a node's agent, over its local socket, what it enforces:
'meshctl status', 'meshctl endpoints', 'meshctl observe' for flow events
(datapath verdicts, the proxy's HTTP requests, mTLS connections),
'meshctl envoy config' for what the node proxy is served, and 'meshctl
identities' / 'meshctl certs' for the workloads' SPIFFE identities. 'meshctl
ca' manages the built-in CA (nodemesh-ca).

Exit status: 0 on success (denied flows included), 1 when --fail-on-deny is
given and a flow is denied, 2 on bad flags or bad input (nothing is printed
on standard output then; the problems are on standard error).`,
		Example: `  # Is frontend allowed to reach backend on port 80?
  meshctl policy check --world world.yaml --policy policies/ \
      --from default/frontend --to default/backend --port 80

  # Reachability matrix of every pod on TCP/80
  meshctl policy check --world world.yaml --policy policies/ --matrix

  meshctl version`,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
		// A bare "meshctl" prints help (cobra does this for a command
		// without Run) and exits 0.
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("meshctl {{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w\nRun '%s --help' for usage.", c.CommandPath(), err, c.CommandPath())
	})
	root.AddCommand(newVersionCmd(), newPolicyCmd(), newStatusCmd(), newEndpointsCmd(), newObserveCmd(), newEnvoyCmd(),
		newIdentitiesCmd(), newCertsCmd(), newCACmd(), newEncryptionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print meshctl's version",
		Long: `Print meshctl's version. Release builds set it with
-ldflags "-X main.version=VERSION"; a build without it says "dev".`,
		Example: `  meshctl version`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(c.OutOrStdout(), "meshctl %s\n", version)
			return err
		},
	}
}
