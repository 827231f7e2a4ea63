/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The layout of every map key and value and of the flow event, shared by the
 * programs in datapath.c. bpf2go turns these structs into Go types
 * (datapath_bpfel.go), so the Go loader and the programs cannot disagree on
 * a layout; the numeric constants are repeated in Go (bpf/types.go) and
 * tested equal there.
 */
#ifndef NODEMESH_DATAPATH_H
#define NODEMESH_DATAPATH_H

#include <linux/types.h>

/* Direction of the local endpoint's policy; equals policy.Direction. */
enum nm_dir {
	NM_DIR_INGRESS = 0, /* toward the pod: to_pod */
	NM_DIR_EGRESS = 1,  /* from the pod: from_pod */
};

/* Peer kinds of a policy key; equal policy.PeerKind, plus the per-direction
 * flags entry. */
enum nm_peer_kind {
	NM_PEER_IDENTITY = 0,   /* peer_id is a numeric identity, 0 = any */
	NM_PEER_CIDR = 1,       /* peer_id is a prefix ID, any address */
	NM_PEER_WORLD_CIDR = 2, /* peer_id is a prefix ID, outside the cluster only */
	NM_PEER_DIR_FLAGS = 0xff,
};

/* Actions of a policy entry; equal policy.Action. */
enum nm_action {
	NM_ACTION_ALLOW = 1,
	NM_ACTION_DENY = 2,
	NM_ACTION_REDIRECT = 3,
};

/* policy_entry.flags of a rule entry. */
#define NM_ENTRY_AUTH_REQUIRED 0x01
/* policy_entry.flags of the NM_PEER_DIR_FLAGS entry. */
#define NM_DIR_SELECTED 0x01
#define NM_DIR_ENFORCED 0x02

/* Why a packet was passed or dropped. Names (Go: Reason.String) follow the
 * reason codes of package policy where they correspond. */
enum nm_reason {
	NM_REASON_UNKNOWN = 0,
	NM_REASON_ALLOWED = 1,           /* allowed-by-rule */
	NM_REASON_DENIED = 2,            /* denied-by-rule */
	NM_REASON_DEFAULT_DENY = 3,      /* default-deny */
	NM_REASON_NO_POLICY = 4,         /* no-policy */
	NM_REASON_NOT_ISOLATED = 5,      /* not-isolated */
	NM_REASON_LOCAL_NODE = 6,        /* local-node */
	NM_REASON_SELF = 7,              /* self */
	NM_REASON_ESTABLISHED = 8,       /* established */
	NM_REASON_REPLY = 9,             /* reply */
	NM_REASON_RELATED = 10,          /* related: ICMP error about a tracked connection */
	NM_REASON_SPOOFED_SOURCE = 11,   /* spoofed-source */
	NM_REASON_UNKNOWN_ENDPOINT = 12, /* unknown-endpoint */
	NM_REASON_PROXY_UNAVAILABLE = 13,/* proxy-unavailable */
	NM_REASON_POLICY_MISSING = 14,   /* policy-missing: endpoint without a policy map */
	NM_REASON_MALFORMED = 15,        /* malformed: truncated or invalid headers */
	NM_REASON_FRAGMENT_UNKNOWN = 16, /* fragment-unknown: its first fragment was not passed */
	NM_REASON_LINK_CONTROL = 17,     /* link-control: ARP, IPv6 ND and MLD */
	NM_REASON_UNSUPPORTED_L3 = 18,   /* unsupported-l3: neither IP nor ARP */
	NM_REASON_FRAGMENT = 19,         /* fragment: a later fragment of a passed datagram */
	NM_REASON_TO_PROXY = 20,         /* to-proxy: handed to the node proxy's socket */
	NM_REASON_PROXY_ENFORCED = 21,   /* proxy-enforced: the proxy's upstream after its ingress L7 check */
	NM_REASON_ENCRYPTION_UNAVAILABLE = 22, /* encryption-unavailable: to a node without a WireGuard peer */
	NM_REASON_MAX = 32,              /* counters slots per direction */
};

enum nm_verdict {
	NM_VERDICT_FORWARDED = 1,
	NM_VERDICT_DROPPED = 2,
	NM_VERDICT_REDIRECTED = 3, /* handed to the node proxy */
};

/* skb->mark. Only the bits of NM_MARK_MASK are ours; the rest belong to
 * other users of the node, except that NM_MARK_TO_PROXY carries the proxy
 * listener's port in bits 16-31. Pods cannot set a mark: it is cleared when
 * a packet crosses into another network namespace. */
#define NM_MARK_MASK 0x0f00
#define NM_MARK_TO_PROXY 0x0200      /* set here: a local route (ip rule) delivers it to the proxy's socket */
#define NM_MARK_PROXY_INGRESS 0x0a00 /* the proxy's inbound upstream: the ingress L7 rules were enforced */
#define NM_MARK_PROXY_EGRESS 0x0b00  /* the proxy's outbound upstream: egress L7 enforced, ingress still applies */
#define NM_MARK_PORT_SHIFT 16

/* The node's settings, one element of the config array. */
struct nm_config {
	__u32 hairpin_ifindex; /* nm_host: to_pod sends what must reach the proxy here, 0: none */
	__u16 mtls_in_port;    /* the proxy's listeners for mTLS flows, 0: not ready (drop) */
	__u16 mtls_out_port;
};

/* flow_event.flags */
#define NM_EVENT_AUTH_REQUIRED 0x01
#define NM_EVENT_MTLS 0x02 /* steered to the proxy for mTLS */

/* ipcache: LPM key over IPv6 addresses, IPv4 as ::ffff:a.b.c.d (prefix
 * length + 96). */
struct ipcache_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 prefix_id; /* longest policy prefix containing the address, 0: none */
	__u32 flags;     /* NM_IPC_* */
};

/* ipcache_value.flags */
#define NM_IPC_REMOTE_POD 0x01 /* a mesh pod on another node */
#define NM_IPC_MTLS_PEER 0x02  /* ... whose node proxy accepts mTLS for it (its mode is not disabled) */
#define NM_IPC_NO_TUNNEL 0x04  /* ... whose node has no WireGuard peer while encryption is on: drop */

struct endpoint_key {
	__u8 addr[16];
};

struct endpoint_info {
	__u32 endpoint_id;
	__u32 ifindex; /* host side of the pod's veth */
	__u32 identity;
	__u32 flags; /* NM_EP_* */
};

/* endpoint_info.flags: the pod's mTLS mode (issue 5) */
#define NM_EP_MTLS_ORIGINATE 0x01 /* connections to remote mesh pods go through the proxy (TLS) */
#define NM_EP_MTLS_ACCEPT 0x02    /* connections from remote mesh pods go to the proxy (TLS, or plaintext if permissive) */

/*
 * Inner policy map key (LPM). Bits 0-63 (dir, kind, proto, pad, peer_id) are
 * always matched in full; the port contributes 0-16 more bits, so
 * prefixlen = 64 + port prefix bits. pad2 is beyond any prefix and zero.
 */
struct policy_key {
	__u32 prefixlen;
	__u8 dir;
	__u8 kind;
	__u8 proto;
	__u8 pad;
	__be32 peer_id;
	__be16 port;
	__u16 pad2;
};

#define NM_POLICY_KEY_FULL 80 /* prefixlen of a full lookup key */

struct policy_entry {
	__u8 action;
	__u8 flags;
	__u16 proxy_port;
	__u32 rule; /* 1 + index of the entry in DirTable.Entries(), 0: none */
};

/* Conntrack key: the initiator's tuple; dir is the program that created the
 * entry (NM_DIR_EGRESS: from_pod, NM_DIR_INGRESS: to_pod). */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad; /* NM_CT_KEY_PROXY or 0 */
};

/* ct_key.pad: the entry of a node proxy's upstream connection to a pod, as
 * to_pod sees it (proxy-marked). It may share its tuple with a connection
 * from another node that was redirected to the proxy (the proxy's source
 * port is chosen by this node's kernel, the client's by another), so the
 * two are kept apart. */
#define NM_CT_KEY_PROXY 1

/* ct_entry.flags */
#define NM_CT_SEEN_REPLY 0x01
#define NM_CT_FIN_INIT 0x02 /* FIN from the initiator */
#define NM_CT_FIN_RESP 0x04 /* FIN from the responder */
#define NM_CT_RST 0x08
#define NM_CT_REDIRECT 0x10       /* the initiator's packets go to the proxy listener at proxy_port */
#define NM_CT_PROXY_UPSTREAM 0x20 /* the initiator is the node proxy: replies go back to its socket */

struct ct_entry {
	__u64 last_seen_ns; /* CLOCK_MONOTONIC */
	__u32 flags;
	__u16 proxy_port; /* NM_CT_REDIRECT: the listener's port */
	__u16 pad;
};

/* Fragments: a datagram whose first fragment a program passed. */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct flow_event {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host order; ICMP echo: identifier */
	__u16 dport; /* host order; ICMP: type */
	__u8 proto;
	__u8 dir;
	__u8 verdict;
	__u8 reason;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;
	__u32 rule;
	__u32 ifindex;
	__u8 flags;
	__u8 pad[3];
};

#endif /* NODEMESH_DATAPATH_H */
