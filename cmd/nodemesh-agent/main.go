// Command nodemesh-agent is Nodemesh's per-node agent: it enforces policy
// for the pods of its node with eBPF (see package agent for how, and
// docs/ARCHITECTURE.md for where it fits).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/caserver"
	"github.com/nodemesh/nodemesh/certs/spire"
	"github.com/nodemesh/nodemesh/wireguard"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nodemesh-agent:", err)
		os.Exit(1)
	}
}

func newCmd() *cobra.Command {
	var cfg agent.Config
	var debug bool
	var hook string
	var splicePods, spliceProxy string
	var svidCfg certs.ManagerConfig
	var spireCfg spire.Config
	var wgCfg wireguard.Config
	c := &cobra.Command{
		Use:   "nodemesh-agent --node-name NODE --world PATH --policies PATH",
		Short: "Enforce Nodemesh policy for the pods of one node",
		Long: `nodemesh-agent enforces policy for the pods of one node. It runs in the
node's network namespace, as root.

Standalone mode (the default): it reads the world (Namespaces, Nodes, Pods,
as 'kubectl get namespaces,nodes,pods -A -o yaml' prints them) and the
policies (NetworkPolicy, MeshNetworkPolicy, MeshClusterwideNetworkPolicy,
CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy) from files or
directories, follows changes to them, and programs the node's eBPF datapath:
tc programs on each pod's host-side veth, an ipcache and a policy table per
pod. An invalid change is refused and the last good state stays in force.

mTLS between node proxies (docs/mtls.md): with --mtls-mode permissive (the
default) or strict, TCP between mesh pods on different nodes goes through the
two node proxies over TLS 1.3 with each workload's SPIFFE identity. The
agent gets the SVIDs of its node's pods from the built-in CA (nodemesh-ca,
--ca-socket) or from SPIRE (--identity-source spire), serves them to the
proxy over SDS, and steers flows to it once it has acknowledged them. The
namespace label mtls.nodemesh.io/mode overrides the mode.

Programs, links and maps are pinned in bpffs: when the agent stops or
crashes, enforcement goes on with the last state, and a restarted agent
adopts it without a gap. 'meshctl status', 'meshctl endpoints' and
'meshctl observe' talk to it over --api-socket.`,
		Example: `  nodemesh-agent --node-name node-1 --world /etc/nodemesh/world --policies /etc/nodemesh/policies
  nsenter --net=/run/netns/node-1 nodemesh-agent --node-name node-1 --world w.yaml --policies p/ \
      --metrics-addr 127.0.0.1:9962
  nodemesh-agent --node-name node-1 --world w.yaml --policies p/ --mtls-mode strict \
      --ca-socket /run/nodemesh/ca/nodes/node-1.sock`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		RunE: func(c *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", cfg.NodeName)
			cfg.Defaults()
			if err := cfg.Validate(); err != nil {
				return err
			}
			dp, err := bpf.Open(bpf.Config{PinDir: cfg.PinDir, Hook: hook})
			if err != nil {
				return fmt.Errorf("open the eBPF datapath: %w", err)
			}
			defer dp.Close() // leaves programs, links and maps pinned: enforcement goes on
			if (splicePods == "") != (spliceProxy == "") {
				return fmt.Errorf("--splice-pods-cgroup and --splice-proxy-cgroup go together")
			}
			if splicePods != "" {
				if err := openSplice(cfg.PinDir, splicePods, spliceProxy, log); err != nil {
					return err
				}
			}
			src := &agent.StandaloneSource{WorldPaths: cfg.WorldPaths, PolicyPaths: cfg.PolicyPaths, Resync: cfg.Resync, Log: log}
			a, err := agent.New(cfg, version, src, agent.BPFDatapath{Datapath: dp}, agent.NetlinkLinks{}, log)
			if err != nil {
				return err
			}
			if err := setIdentities(a, cfg, spireCfg, svidCfg, log); err != nil {
				return err
			}
			if cfg.Encryption == "wireguard" {
				dev, err := openTunnel(a, cfg, wgCfg, log)
				if err != nil {
					return fmt.Errorf("encryption between nodes: %w", err)
				}
				// A userspace device lives in this process: when it ends,
				// the fallback routes drop what would have gone through it.
				defer dev.Close()
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	cfg.BindFlags(c.Flags())
	svidCfg.BindFlags(c.Flags())
	spireCfg.BindFlags(c.Flags())
	wgCfg.BindFlags(c.Flags())
	c.Flags().BoolVar(&debug, "debug", false, "log at debug level")
	c.Flags().StringVar(&splicePods, "splice-pods-cgroup", "", "cgroup v2 directory holding this node's pods: splice their sockets with the node proxy's (sockmap; off by default, see docs/ARCHITECTURE.md for what it changes for pods)")
	c.Flags().StringVar(&spliceProxy, "splice-proxy-cgroup", "", "cgroup v2 directory of the node proxy, with --splice-pods-cgroup")
	c.Flags().StringVar(&hook, "bpf-hook", "", "attach the programs with tcx links or tc clsact filters: tcx, tc, or empty for tcx where the kernel has it (6.6+) and tc otherwise")
	return c
}

// setIdentities gives the agent its source of workload SVIDs. With
// --mtls-mode disabled there is none, so namespace labels cannot turn mTLS
// on. The source connects lazily: an unreachable CA or SPIRE agent delays
// the SVIDs (pods stay plaintext in permissive mode, fail closed in
// strict), it does not stop the agent.
func setIdentities(a *agent.Agent, cfg agent.Config, spireCfg spire.Config, svidCfg certs.ManagerConfig, log *slog.Logger) error {
	if cfg.MTLSMode == "disabled" {
		log.Info("mTLS between node proxies disabled (--mtls-mode disabled); namespace labels cannot turn it on")
		return nil
	}
	switch cfg.IdentitySource {
	case "spire":
		spireCfg.Logger = log.With("component", "spire")
		src, err := spire.New(spireCfg)
		if err != nil {
			return err
		}
		a.SetIdentities(src, nil)
		log.Info("workload identities from SPIRE", "socket", spireCfg.Addr)
	default:
		svidCfg.NodeName, svidCfg.TrustDomain = cfg.NodeName, cfg.TrustDomain
		svidCfg.Logger = log.With("component", "svids")
		client := caserver.NewClient(cfg.CASocket, caserver.WithLogger(log.With("component", "ca-client")), caserver.WithBackoff(200*time.Millisecond, 5*time.Second))
		m, err := certs.NewManager(svidCfg, client)
		if err != nil {
			return err
		}
		a.SetIdentities(m, m)
		log.Info("workload identities from the built-in CA", "socket", cfg.CASocket, "trust-domain", cfg.TrustDomain)
	}
	return nil
}

// openSplice attaches the sockmap splice between the pods' sockets and the
// node proxy's. It stays attached (pinned) after the agent exits.
func openSplice(pinDir, pods, proxy string, log *slog.Logger) error {
	s, err := bpf.OpenSplice(pinDir)
	if err != nil {
		return fmt.Errorf("splice: %w", err)
	}
	defer s.Close()
	if err := s.AttachPods(pods); err != nil {
		return fmt.Errorf("splice: %w", err)
	}
	if err := s.AttachProxy(proxy); err != nil {
		return fmt.Errorf("splice: %w", err)
	}
	log.Info("splicing pod sockets with the node proxy's", "pods", pods, "proxy", proxy)
	return nil
}
