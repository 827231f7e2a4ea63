// Package bpf is the eBPF datapath: it enforces the compiled policy tables
// of package policy (policy.Table) on the packets of each pod, statefully,
// with two tc programs on the host side of the pod's veth. The lookups and
// their merge are exactly policy.DirTable.Decide's; TestDifferentialDatapath
// holds them equal to the reference evaluator on random worlds.
//
// # Files
//
//	datapath.c          the programs (C, compiled by bpf2go into the
//	include/datapath.h  committed datapath_bpfel.{go,o}; `go generate ./bpf/`
//	                    reproduces them byte for byte with Debian's clang 14)
//	datapath.go         Config, Open (load or adopt), Close, Remove
//	links.go            Attach/Detach: pinned tcx links per interface
//	table.go            policy.Table → policy map elements (port ranges →
//	                    LPM port prefixes)
//	maps.go             endpoints, policy (map-in-map swap), ipcache sync,
//	                    map usage
//	events.go           flow events (ring buffer), counters, reasons
//	splice.c, splice.go the sockmap splice between pod sockets and the node
//	include/splice.h    proxy's (sock_ops + sk_msg, opt-in; splice_bpfel.*)
//
// # Programs
//
// from_pod runs on the host veth's ingress (what the pod sends) and applies
// the pod's egress policy; to_pod runs on its egress (what is sent to the
// pod) and applies the pod's ingress policy. A packet between two pods of
// one node crosses from_pod of the source and to_pod of the destination, so
// both policies apply; between nodes, each node's datapath applies its own
// side with its own ipcache. For each packet:
//
//  1. Parse Ethernet, IPv4 or IPv6 (extension headers, fragments), TCP,
//     UDP, SCTP, ICMP, ICMPv6. ARP, IPv6 neighbour discovery and MLD (with
//     the hop limits that keep them on the link) pass (link-control); other
//     ethertypes are dropped (unsupported-l3), as are truncated headers
//     (malformed).
//  2. The local pod: from_pod drops a packet whose source is not an endpoint
//     on the packet's interface (spoofed-source); to_pod one whose
//     destination is not (unknown-endpoint).
//  3. A later fragment passes exactly when the same program passed the
//     first fragment of its datagram (fragment, fragment-unknown).
//  4. Conntrack: a reply of a connection the other program tracked, or a
//     further packet of one this program tracked, passes (reply,
//     established), as does an ICMP error about one (related). TCP, UDP,
//     SCTP, ICMP echo (by identifier) and other IP protocols are
//     tracked; entries time out against their last packet (TCP 60 s before
//     a reply, 6 h established, 10 s after FIN both ways or RST; UDP 60 s;
//     SCTP 5 min; ICMP 30 s; others 60 s).
//  5. Otherwise the packet opens a connection. The remote address resolves
//     in the ipcache to an identity and a prefix ID (a miss is world-ipv4 or
//     world-ipv6, no prefix); the keys (identity), (any), (cidr, prefix) and,
//     for world identities, (world-cidr, prefix) are looked up for the
//     protocol and port (ICMP: the type; untabled protocols: proto 0, port 0)
//     and merged as Decide does: not selected → no-policy; a deny →
//     denied-by-rule; an allow → allowed-by-rule; only L7-restricted allows →
//     the node proxy (to-proxy, verdict redirected; see "L7 redirect"), or
//     dropped as proxy-unavailable when there is none (fail closed, never
//     around the HTTP rules); ingress from the local node →
//     local-node; default deny → default-deny; else not-isolated. A pod
//     reaching itself is always allowed (self). An allowed connection is
//     tracked.
//  6. Count the packet per (direction, reason) and, for a new connection
//     or a drop, emit a flow event.
//
// The programs return TC_ACT_OK or TC_ACT_SHOT and are attached first on
// their tcx hooks. On kernels without tcx (before 6.6), or with
// Config.Hook = HookTC, they are attached as direct-action tc filters on
// the interface's clsact qdisc instead; a filter holds its program as a
// pinned link does, and replacing it switches programs atomically.
//
// # L7 redirect
//
// A redirect goes to the proxy's transparent listener, whose port the
// policy entry carries (0 until the proxy ACKed its configuration: dropped).
// from_pod, at tc ingress, assigns egress-L7 connections to the outbound
// listener with bpf_sk_assign and marks them 0x200/0xf00 so the node's
// fwmark rule delivers them locally (package redirect). to_pod runs at tc
// egress, where bpf_sk_assign is refused: it marks ingress-L7 packets (the
// listener port in the mark's upper half) and bpf_redirects them to the
// hairpin veth, whose far end runs to_proxy (AttachHairpin, SetHairpin),
// which assigns them. Conntrack keeps the redirect (NM_CT_REDIRECT) for the
// connection's further packets, and the proxy's upstream connections (mark
// 0x0a00 inbound, 0x0b00 outbound) as NM_CT_PROXY_UPSTREAM, whose replies
// from_pod hands to the proxy's socket; to_pod hairpins a segment for a
// node socket that no conntrack entry explains (a reply from another node
// to the egress proxy's upstream). 0x0a00 means the ingress L7 rules were
// enforced (proxy-enforced). No socket or listener: proxy-unavailable.
//
// # Encryption between nodes
//
// With WireGuard on, the ipcache marks remote pods whose node has no
// WireGuard peer yet (policy.IPCacheEntry.NoTunnel): from_pod drops what a
// local pod sends them as encryption-unavailable, any protocol, so that
// nothing leaves for such a node in plaintext (the routes send the rest
// through the WireGuard device).
//
// # Maps
//
// All pinned in Config.PinDir (one directory per node): endpoints (pod
// address → endpoint ID, host veth ifindex, identity), ipcache (LPM over
// IPv6, IPv4 as ::ffff:a.b.c.d, → identity, prefix ID; loaded from
// policy.Engine.IPCache of the node), policy (endpoint ID → that
// endpoint's policy map), conntrack (LRU), fragments (LRU), counters
// (per-CPU), events (ring buffer) and config (the hairpin's ifindex). The
// layouts are in include/datapath.h.
//
// An endpoint's policy map is an LPM trie holding both directions: per
// direction a flags entry (selected, enforced) and, per table entry, one
// element per aligned power-of-two block of its port range, keyed by
// {prefixlen, dir, kind, proto, pad, peer (big-endian), port (big-endian)},
// prefixlen = 64 + the block's prefix bits. Entries of one (dir, peer,
// proto) are disjoint, so the longest-prefix match of a port finds the one
// entry covering it, or none.
//
// # Atomic policy updates
//
// A live policy map is never written. SetPolicy builds a new map, fills it,
// freezes it (the kernel then refuses any write to it from user space), and
// replaces the endpoint's slot in the outer map in one update. The outer
// map holds the only reference: a packet being decided keeps whichever map
// it looked up, old or new, until it is done, and the old map is freed after
// that. No packet sees a half-written table (TestPolicySwapIsAtomic).
//
// # Restarts
//
// Close leaves maps, links and programs in place: enforcement continues
// with the last state written. Open on the same pin directory adopts them:
// maps are reused with their contents (connections survive), and each
// pinned link is switched to the new process's program with an atomic link
// update when the attached program differs (by tag or maps) — links are
// never detached, so no packet passes unenforced. Maps of an incompatible
// layout make Open fail rather than be silently replaced.
//
// # Tests
//
// Privileged tests need root and Linux; they mount a private bpffs per
// test. They skip when not root, but as root on Linux 6.6 or later a setup
// failure fails the test. Most run the programs with BPF_PROG_TEST_RUN: the
// kernel then gives the packet the caller's loopback device, so the tests
// register endpoints with the loopback's ifindex. The adoption test attaches
// to a real veth between two network namespaces it creates.
package bpf
