// Package redirect prepares a node's network namespace for steering
// L7-covered connections to the node proxy, the part of the redirect that is
// not eBPF:
//
//   - a local routing table (2004) and an ip rule sending packets marked
//     NM_MARK_TO_PROXY (0x200 under mask 0xf00) to it, so that a packet the
//     datapath assigned to a proxy socket with bpf_sk_assign is delivered
//     locally although its destination is a pod's address;
//   - the hairpin, a veth pair nm_host ↔ nm_net: to_pod runs on a pod veth's
//     egress, where bpf_sk_assign is refused, so it redirects such packets
//     to nm_host; they enter the node again on nm_net's ingress, where the
//     to_proxy program assigns them;
//   - net.ipv4.tcp_early_demux off: early demux would attach the proxy's
//     socket to a redirected connection's segments as they enter the node,
//     before they reach to_pod, and the kernel drops forwarded segments
//     with a socket attached.
//
// The choice of bpf_sk_assign over TPROXY, the marks and the packet walks
// are in docs/ARCHITECTURE.md ("L7: transparent redirect"). The programs are
// in package bpf; package redirect only sets up routes, rules, links and
// sysctls, idempotently, so an agent restart finds them in place.
package redirect
