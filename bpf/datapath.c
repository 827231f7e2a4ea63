//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Nodemesh datapath: two tc (tcx) programs on the host side of each pod's
 * veth enforce the pod's compiled policy (policy.Table) statefully.
 *
 *   from_pod  host veth ingress: packets the pod sends     -> its EGRESS policy
 *   to_pod    host veth egress:  packets toward the pod    -> its INGRESS policy
 *
 * The pipeline of one packet, both programs (handle()):
 *
 *   parse         eth, IPv4/IPv6 (+extension headers, fragments),
 *                 TCP/UDP/SCTP/ICMP/ICMPv6; ARP, ND and MLD pass
 *   endpoint      from_pod: the source must be an endpoint on this veth
 *                 (anti-spoofing); to_pod: the destination must be
 *   fragments     a later fragment (no L4 header) passes exactly when the
 *                 first fragment of its datagram passed
 *   conntrack     a reply of a tracked connection or a further packet of one
 *                 passes (and refreshes it); so does an ICMP error about one
 *   policy        otherwise the packet opens a connection: the remote
 *                 address resolves in the ipcache to (identity, prefix ID),
 *                 up to four keys are looked up in the endpoint's policy map
 *                 and merged exactly as policy.DirTable.Decide merges them;
 *                 an allowed connection is tracked
 *   account       per-CPU counters per (direction, reason) for every packet;
 *                 a flow event for every new connection and every drop
 *
 * L7: a connection the table allows only with HTTP rules (a redirect entry)
 * goes to the node proxy's transparent listener, where it enters the node:
 *
 *   egress rules   from_pod (tc ingress) assigns it to the outbound listener
 *                  with bpf_sk_assign and marks it NM_MARK_TO_PROXY, which an
 *                  ip rule routes to a local table, so the node delivers it
 *   ingress rules  to_pod runs on tc egress, where bpf_sk_assign is refused:
 *                  it marks the packet and redirects it to the hairpin veth
 *                  (nm_host), whose peer's ingress (nm_net) runs to_proxy,
 *                  which assigns it to the inbound listener
 *
 * Further packets of the connection follow conntrack (NM_CT_REDIRECT) to the
 * proxy's accepted socket. The proxy's own upstream connections come from the
 * client's address (Envoy's original_src) with NM_MARK_PROXY_*; to_pod tracks
 * them (NM_CT_PROXY_UPSTREAM) so their replies go back to the proxy's socket.
 * No proxy socket, no proxy port (the proxy has not ACKed the configuration
 * yet), or not TCP: the packet is dropped as proxy-unavailable, fail closed.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "datapath.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Map sizes. LPM tries are not preallocated: their size is only a bound. */
#define NM_MAX_ENDPOINTS 4096
#define NM_MAX_IPCACHE 524288
#define NM_MAX_CONNTRACK 131072
#define NM_MAX_FRAGMENTS 8192
#define NM_EVENTS_BYTES (1 << 20)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NM_MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NM_MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* The template of every endpoint's policy map. The kernel compares an inner
 * map with the template by type, key and value size and flags, not by
 * size: each endpoint's map is sized to its table. */
struct policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, NM_MAX_ENDPOINTS);
	__type(key, __u32); /* endpoint ID */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct policy_inner);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NM_MAX_CONNTRACK);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NM_MAX_FRAGMENTS);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * NM_REASON_MAX);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NM_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nm_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* Force full BTF for the event type, which no map names, and for the inner
 * map's key and value, which clang 14 emits only as forward declarations
 * when they are reached through the map-in-map definition. */
const struct flow_event *unused_flow_event __attribute__((unused));
const struct policy_key *unused_policy_key __attribute__((unused));
const struct policy_entry *unused_policy_entry __attribute__((unused));

/* Connection timeouts, against ct_entry.last_seen_ns. */
#define SEC_NS 1000000000ULL
#define CT_TCP_SYN_NS (60 * SEC_NS)          /* no reply seen yet */
#define CT_TCP_ESTABLISHED_NS (21600 * SEC_NS) /* 6 h */
#define CT_TCP_CLOSING_NS (10 * SEC_NS)      /* FIN both ways, or RST */
#define CT_UDP_NS (60 * SEC_NS)
#define CT_SCTP_NS (300 * SEC_NS)            /* heartbeats every 30 s keep it */
#define CT_ICMP_NS (30 * SEC_NS)
#define CT_OTHER_NS (60 * SEC_NS)
/* last_seen is written at most this often per entry, not per packet. */
#define CT_REFRESH_NS SEC_NS

#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1fff

/* What parsing found. */
enum pkt_class {
	PKT_IP = 0,        /* an IP packet to decide */
	PKT_LINK_CONTROL,  /* ARP, ND, MLD: pass */
	PKT_UNSUPPORTED,   /* another ethertype: drop */
	PKT_MALFORMED,     /* drop */
};

/* How the packet's ICMP message relates to conntrack. */
enum icmp_kind {
	ICMP_NONE = 0,  /* not ICMP */
	ICMP_ECHO,      /* echo request or reply: tracked by identifier */
	ICMP_ERROR,     /* carries the header of a datagram it is about */
	ICMP_OTHER,     /* decided per packet, never tracked */
};

struct pkt {
	struct ct_key tuple;   /* addresses (v4 mapped), ports, protocol */
	struct ct_key inner;   /* ICMP error: the datagram it is about */
	__u32 frag_id;
	__u16 policy_port;     /* host order: port, ICMP type, 0 */
	__u8 policy_proto;     /* protocol of the policy key: 0 for untabled ones */
	__u8 tcp_flags;
	__u8 icmp_kind;
	__u8 has_inner;
	__u8 frag_first;       /* first fragment of a fragmented datagram */
	__u8 frag_later;       /* a later fragment: no L4 header */
	__u8 hop_limit;        /* IPv6 */
};

static __always_inline void set_v4_mapped(__u8 *dst, __be32 addr)
{
	__u32 *w = (__u32 *)dst;
	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = addr;
}

static __always_inline void copy_addr(__u8 *dst, const __u8 *src)
{
	__u32 *d = (__u32 *)dst;
	const __u32 *s = (const __u32 *)src;
	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

static __always_inline int is_icmp(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6_;
}

/* Reads the first bytes of an L4 header at off into the tuple: ports, or
 * the ICMP echo identifier. For the embedded datagram of an ICMP error only
 * the first 8 bytes are guaranteed. */
static __always_inline int load_ports(struct __sk_buff *skb, __u32 off, struct ct_key *t,
				      __u8 *icmp_type, __u8 *icmp_kind, int embedded)
{
	int v6 = t->proto == IPPROTO_ICMPV6_; /* ICMP types by protocol, not family */
	__u8 l4[8];
	switch (t->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP_:
		if (bpf_skb_load_bytes(skb, off, l4, embedded ? 4 : 8) < 0)
			return -1;
		t->sport = *(__be16 *)&l4[0];
		t->dport = *(__be16 *)&l4[2];
		return 0;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		if (bpf_skb_load_bytes(skb, off, l4, 8) < 0)
			return -1;
		*icmp_type = l4[0];
		if ((!v6 && l4[0] == 8) || (v6 && l4[0] == 128)) {
			/* Echo request: the identifier is the source "port"... */
			*icmp_kind = ICMP_ECHO;
			t->sport = *(__be16 *)&l4[4];
			t->dport = 0;
		} else if ((!v6 && l4[0] == 0) || (v6 && l4[0] == 129)) {
			/* ...and the reply's destination "port", so a reply is the
			 * reversed tuple of its request, and a request the other way
			 * with the same identifier is not. */
			*icmp_kind = ICMP_ECHO;
			t->sport = 0;
			t->dport = *(__be16 *)&l4[4];
		} else if ((!v6 && (l4[0] == 3 || l4[0] == 11 || l4[0] == 12)) ||
			   (v6 && l4[0] >= 1 && l4[0] <= 4)) {
			*icmp_kind = ICMP_ERROR;
		} else {
			*icmp_kind = ICMP_OTHER;
		}
		return 0;
	}
	return 0;
}

/* Parses the datagram an ICMP error embeds, at off, into p->inner. */
static __always_inline void parse_embedded(struct __sk_buff *skb, __u32 off, struct pkt *p, int v6)
{
	__u8 type = 0, kind = 0;
	__u32 l4off;
	if (!v6) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
			return;
		if (ip.frag_off & bpf_htons(IP_OFFSET_))
			return;
		set_v4_mapped(p->inner.saddr, ip.saddr);
		set_v4_mapped(p->inner.daddr, ip.daddr);
		p->inner.proto = ip.protocol;
		l4off = off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return;
		copy_addr(p->inner.saddr, (__u8 *)&ip6.saddr);
		copy_addr(p->inner.daddr, (__u8 *)&ip6.daddr);
		p->inner.proto = ip6.nexthdr;
		l4off = off + sizeof(ip6);
	}
	switch (p->inner.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP_:
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		break;
	default:
		return;
	}
	if (load_ports(skb, l4off, &p->inner, &type, &kind, 1) < 0)
		return;
	if (is_icmp(p->inner.proto) && kind != ICMP_ECHO)
		return; /* an error about an error, or an untracked message */
	p->has_inner = 1;
}

/* Fills the policy protocol and port from the parsed L4 protocol. */
static __always_inline void set_policy_port(struct pkt *p, __u8 icmp_type)
{
	switch (p->tuple.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP_:
		p->policy_proto = p->tuple.proto;
		p->policy_port = bpf_ntohs(p->tuple.dport);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		p->policy_proto = p->tuple.proto;
		p->policy_port = icmp_type;
		break;
	default:
		/* Every other protocol: the table's ProtoAny entries, port 0. */
		p->policy_proto = 0;
		p->policy_port = 0;
	}
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p, int v6)
{
	__u8 icmp_type = 0, kind = 0;

	if (p->frag_later)
		return PKT_IP; /* ports come from the first fragment */
	if (load_ports(skb, off, &p->tuple, &icmp_type, &kind, 0) < 0)
		return PKT_MALFORMED;
	p->icmp_kind = kind;
	if (p->tuple.proto == IPPROTO_TCP) {
		__u8 fl;
		if (bpf_skb_load_bytes(skb, off + 13, &fl, 1) < 0)
			return PKT_MALFORMED;
		p->tcp_flags = fl;
	}
	if (v6 && p->tuple.proto == IPPROTO_ICMPV6_) {
		/* Neighbour discovery (133-137, hop limit 255) and MLD (130-132,
		 * 143, hop limit 1) are link-local control traffic: receivers
		 * refuse them with another hop limit, so none that pass here
		 * can have been or be routed. */
		if (icmp_type >= 133 && icmp_type <= 137 && p->hop_limit == 255)
			return PKT_LINK_CONTROL;
		if (((icmp_type >= 130 && icmp_type <= 132) || icmp_type == 143) && p->hop_limit == 1)
			return PKT_LINK_CONTROL;
	}
	set_policy_port(p, icmp_type);
	if (kind == ICMP_ERROR)
		parse_embedded(skb, off + 8, p, v6);
	return PKT_IP;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__be16 proto;
	__u32 off = ETH_HLEN;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return PKT_MALFORMED;
	if (proto == bpf_htons(ETH_P_ARP))
		return PKT_LINK_CONTROL;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
			return PKT_MALFORMED;
		set_v4_mapped(p->tuple.saddr, ip.saddr);
		set_v4_mapped(p->tuple.daddr, ip.daddr);
		p->tuple.proto = ip.protocol;
		if (ip.frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) {
			p->frag_id = bpf_ntohs(ip.id);
			if (ip.frag_off & bpf_htons(IP_OFFSET_))
				p->frag_later = 1;
			else
				p->frag_first = 1;
		}
		return parse_l4(skb, off + ip.ihl * 4, p, 0);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u8 nexthdr;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return PKT_MALFORMED;
		copy_addr(p->tuple.saddr, (__u8 *)&ip6.saddr);
		copy_addr(p->tuple.daddr, (__u8 *)&ip6.daddr);
		nexthdr = ip6.nexthdr;
		p->hop_limit = ip6.hop_limit;
		off += sizeof(ip6);
		/* Extension headers: a few, bounded. */
		for (int i = 0; i < 6; i++) {
			__u8 ext[8];
			if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
			    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT &&
			    nexthdr != IPPROTO_AH)
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
				return PKT_MALFORMED;
			if (nexthdr == IPPROTO_FRAGMENT) {
				__u16 fo = bpf_ntohs(*(__be16 *)&ext[2]);
				p->frag_id = bpf_ntohl(*(__be32 *)&ext[4]);
				if (fo & 0xfff8)
					p->frag_later = 1;
				else if (fo & 1)
					p->frag_first = 1;
				off += 8;
			} else if (nexthdr == IPPROTO_AH) {
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				off += ((__u32)ext[1] + 1) * 8;
			}
			nexthdr = ext[0];
		}
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_FRAGMENT:
		case IPPROTO_AH:
			return PKT_MALFORMED; /* more extension headers than we walk */
		}
		p->tuple.proto = nexthdr;
		return parse_l4(skb, off, p, 1);
	}
	return PKT_UNSUPPORTED;
}

/* ---- accounting ---- */

static __always_inline void count(__u8 dir, __u8 reason, __u32 len)
{
	__u32 idx = (__u32)dir * NM_REASON_MAX + reason;
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

struct verdict {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;
	__u32 rule;
	__u8 reason;
	__u8 drop;
	__u8 flags;
	__u8 redirect;       /* decide: only L7-restricted, go to the proxy */
	__u8 to_proxy;       /* the packet goes to the proxy */
	__u16 proxy_port;    /* decide: the listener of a redirect, 0: not ready */
	__u32 hairpin;       /* finish: bpf_redirect to this interface */
};

static __always_inline void emit(struct __sk_buff *skb, struct pkt *p, __u8 dir, struct verdict *v)
{
	struct flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	e->timestamp_ns = bpf_ktime_get_ns();
	copy_addr(e->saddr, p->tuple.saddr);
	copy_addr(e->daddr, p->tuple.daddr);
	if (is_icmp(p->tuple.proto)) {
		e->sport = bpf_ntohs(p->tuple.sport | p->tuple.dport); /* echo identifier */
		e->dport = p->policy_port;                              /* type */
	} else {
		e->sport = bpf_ntohs(p->tuple.sport);
		e->dport = bpf_ntohs(p->tuple.dport);
	}
	e->proto = p->tuple.proto;
	e->dir = dir;
	e->verdict = v->drop ? NM_VERDICT_DROPPED : v->to_proxy ? NM_VERDICT_REDIRECTED : NM_VERDICT_FORWARDED;
	e->reason = v->reason;
	e->src_identity = v->src_identity;
	e->dst_identity = v->dst_identity;
	e->endpoint_id = v->endpoint_id;
	e->rule = v->rule;
	e->ifindex = skb->ifindex;
	e->flags = v->flags;
	e->pad[0] = 0;
	e->pad[1] = 0;
	e->pad[2] = 0;
	/* No wakeup: a wakeup per new connection costs the agent a context
	 * switch per connection (measured: 0.65x the new-connection rate).
	 * The reader polls the ring instead (see ReadEvents). */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* ---- conntrack ---- */

static __always_inline __u64 ct_timeout(__u8 proto, __u32 flags)
{
	switch (proto) {
	case IPPROTO_TCP:
		if ((flags & NM_CT_RST) || (flags & (NM_CT_FIN_INIT | NM_CT_FIN_RESP)) == (NM_CT_FIN_INIT | NM_CT_FIN_RESP))
			return CT_TCP_CLOSING_NS;
		if (!(flags & NM_CT_SEEN_REPLY))
			return CT_TCP_SYN_NS;
		return CT_TCP_ESTABLISHED_NS;
	case IPPROTO_UDP:
		return CT_UDP_NS;
	case IPPROTO_SCTP_:
		return CT_SCTP_NS;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		return CT_ICMP_NS;
	}
	return CT_OTHER_NS;
}

static __always_inline int ct_live(struct ct_entry *e, __u8 proto, __u64 now)
{
	return now - e->last_seen_ns <= ct_timeout(proto, e->flags);
}

static __always_inline void reverse(struct ct_key *dst, const struct ct_key *src)
{
	copy_addr(dst->saddr, src->daddr);
	copy_addr(dst->daddr, src->saddr);
	dst->sport = src->dport;
	dst->dport = src->sport;
	dst->proto = src->proto;
	dst->pad = 0;
}

/* Refreshes a live entry for a packet of its initiator (reply = 0) or
 * responder (reply = 1). */
static __always_inline void ct_refresh(struct ct_entry *e, struct pkt *p, int reply, __u64 now)
{
	__u32 flags = e->flags;
	if (reply)
		flags |= NM_CT_SEEN_REPLY;
	if (p->tuple.proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FLAG_RST)
			flags |= NM_CT_RST;
		if (p->tcp_flags & TCP_FLAG_FIN)
			flags |= reply ? NM_CT_FIN_RESP : NM_CT_FIN_INIT;
	}
	if (flags != e->flags) {
		e->flags = flags;
		e->last_seen_ns = now;
	} else if (now - e->last_seen_ns >= CT_REFRESH_NS) {
		e->last_seen_ns = now;
	}
}

static __always_inline int tcp_new_syn(struct pkt *p)
{
	return p->tuple.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Looks the packet up: a reply of a connection the other program tracked
 * (the reversed tuple, the other direction), or a further packet of one this
 * program tracked. Returns the reason, or 0 for a new connection; *found is
 * the entry's flags and proxy port. */
static __always_inline __u8 ct_lookup(struct pkt *p, __u8 dir, __u64 now, struct ct_entry *found)
{
	struct ct_key k = {};
	struct ct_entry *e;

	if (p->icmp_kind == ICMP_OTHER || p->icmp_kind == ICMP_ERROR)
		return 0;
	reverse(&k, &p->tuple);
	k.dir = dir ^ 1;
	if (dir == NM_DIR_EGRESS) {
		/* A pod answering the node proxy's upstream connection. */
		k.pad = NM_CT_KEY_PROXY;
		e = bpf_map_lookup_elem(&conntrack, &k);
		if (e && ct_live(e, k.proto, now)) {
			ct_refresh(e, p, 1, now);
			found->flags = e->flags;
			return NM_REASON_REPLY;
		}
		k.pad = 0;
	}
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && ct_live(e, k.proto, now)) {
		ct_refresh(e, p, 1, now);
		found->flags = e->flags;
		return NM_REASON_REPLY;
	}
	k = p->tuple;
	k.dir = dir;
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && ct_live(e, k.proto, now)) {
		/* A SYN on a closing connection reuses its ports: decide anew. */
		if (tcp_new_syn(p) && ct_timeout(IPPROTO_TCP, e->flags) == CT_TCP_CLOSING_NS)
			return 0;
		ct_refresh(e, p, 0, now);
		found->flags = e->flags;
		found->proxy_port = e->proxy_port;
		return NM_REASON_ESTABLISHED;
	}
	return 0;
}

/* An ICMP error about a tracked connection. In to_pod the embedded datagram
 * was sent by the pod: its tuple is the pod's egress connection, or the
 * reverse of an ingress one; in from_pod it was received by the pod. */
static __always_inline int ct_related(struct pkt *p, __u8 dir, __u64 now)
{
	struct ct_key k = {};
	struct ct_entry *e;

	if (!p->has_inner)
		return 0;
	/* The error goes to the datagram's sender. */
	if (!addr_eq(p->inner.saddr, p->tuple.daddr))
		return 0;
	k = p->inner;
	k.dir = dir ^ 1;
	k.pad = 0;
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && ct_live(e, k.proto, now))
		return 1;
	reverse(&k, &p->inner);
	k.dir = dir;
	e = bpf_map_lookup_elem(&conntrack, &k);
	return e && ct_live(e, k.proto, now);
}

static __always_inline void ct_create(struct pkt *p, __u8 dir, __u64 now, __u32 flags, __u16 proxy_port)
{
	struct ct_key k;
	struct ct_entry e = {};

	if (p->icmp_kind == ICMP_OTHER || p->icmp_kind == ICMP_ERROR)
		return;
	k = p->tuple;
	k.dir = dir;
	e.last_seen_ns = now;
	e.flags = flags;
	e.proxy_port = proxy_port;
	if (p->tuple.proto == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_RST))
		e.flags |= NM_CT_RST;
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}

/* ---- policy ---- */

struct merge {
	__u32 deny_rule;
	__u32 allow_rule;
	__u32 redirect_rule;
	__u16 proxy_port;
	__u8 any_deny;
	__u8 any_allow;
	__u8 any_redirect;
	__u8 auth;
};

static __always_inline void lookup_one(void *inner, struct policy_key *k, __u8 kind, __u32 peer, struct merge *m)
{
	struct policy_entry *e;

	k->kind = kind;
	k->peer_id = bpf_htonl(peer);
	e = bpf_map_lookup_elem(inner, k);
	if (!e)
		return;
	switch (e->action) {
	case NM_ACTION_DENY:
		if (!m->any_deny)
			m->deny_rule = e->rule;
		m->any_deny = 1;
		return;
	case NM_ACTION_ALLOW:
		if (!m->any_allow)
			m->allow_rule = e->rule;
		m->any_allow = 1;
		break;
	case NM_ACTION_REDIRECT:
		if (!m->any_redirect) {
			m->redirect_rule = e->rule;
			m->proxy_port = e->proxy_port;
		}
		m->any_redirect = 1;
		break;
	default:
		return;
	}
	if (e->flags & NM_ENTRY_AUTH_REQUIRED)
		m->auth = 1;
}

static __always_inline int is_world(__u32 id)
{
	return id == 2 || id == 9 || id == 10;
}

static __always_inline int is_local_host(__u32 id)
{
	return id == 1 || id == 11;
}

/* policy.DirTable.Decide: the endpoint's policy in direction dir toward a
 * remote of identity id whose address's longest policy prefix is pid. */
static __always_inline void decide(__u32 endpoint_id, __u8 dir, __u32 id, __u32 pid, struct pkt *p, struct verdict *v)
{
	struct policy_key k = {};
	struct policy_entry *flags;
	struct merge m = {};
	void *inner;

	inner = bpf_map_lookup_elem(&policy, &endpoint_id);
	if (!inner) {
		v->reason = NM_REASON_POLICY_MISSING;
		v->drop = 1;
		return;
	}
	k.prefixlen = NM_POLICY_KEY_FULL;
	k.dir = dir;
	k.kind = NM_PEER_DIR_FLAGS;
	flags = bpf_map_lookup_elem(inner, &k);
	if (!flags) {
		v->reason = NM_REASON_POLICY_MISSING;
		v->drop = 1;
		return;
	}
	if (!(flags->flags & NM_DIR_SELECTED)) {
		v->reason = NM_REASON_NO_POLICY;
		return;
	}
	__u8 enforced = flags->flags & NM_DIR_ENFORCED;

	k.proto = p->policy_proto;
	k.port = bpf_htons(p->policy_port);
	lookup_one(inner, &k, NM_PEER_IDENTITY, id, &m);
	lookup_one(inner, &k, NM_PEER_IDENTITY, 0, &m);
	if (pid) {
		lookup_one(inner, &k, NM_PEER_CIDR, pid, &m);
		if (is_world(id))
			lookup_one(inner, &k, NM_PEER_WORLD_CIDR, pid, &m);
	}
	if (m.any_deny) {
		v->reason = NM_REASON_DENIED;
		v->rule = m.deny_rule;
		v->drop = 1;
		return;
	}
	if (m.any_allow || m.any_redirect) {
		v->flags = m.auth ? NM_EVENT_AUTH_REQUIRED : 0;
		if (m.any_allow) {
			/* An allow without L7 rules allows every request. */
			v->reason = NM_REASON_ALLOWED;
			v->rule = m.allow_rule;
			return;
		}
		/* Only L7-restricted: the flow must go through the proxy.
		 * Without a proxy port (none has ACKed a configuration serving
		 * it) or for another protocol than TCP (HTTP rules only), there
		 * is none, and passing it would bypass the HTTP rules. */
		v->rule = m.redirect_rule;
		if (!m.proxy_port || p->tuple.proto != IPPROTO_TCP) {
			v->reason = NM_REASON_PROXY_UNAVAILABLE;
			v->drop = 1;
			return;
		}
		v->redirect = 1;
		v->proxy_port = m.proxy_port;
		return;
	}
	if (dir == NM_DIR_INGRESS && is_local_host(id)) {
		v->reason = NM_REASON_LOCAL_NODE;
		return;
	}
	if (enforced) {
		v->reason = NM_REASON_DEFAULT_DENY;
		v->drop = 1;
		return;
	}
	v->reason = NM_REASON_NOT_ISOLATED;
}

/* ---- the proxy ---- */

static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* The node socket (never a listener) that owns the packet's tuple: the
 * proxy's accepted socket of a redirected connection, or its upstream socket
 * for a reply. NULL when there is none. */
static __always_inline struct bpf_sock *lookup_conn(struct __sk_buff *skb, const struct ct_key *k)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	if (is_v4_mapped(k->saddr)) {
		t.ipv4.saddr = ((const __u32 *)k->saddr)[3];
		t.ipv4.daddr = ((const __u32 *)k->daddr)[3];
		t.ipv4.sport = k->sport;
		t.ipv4.dport = k->dport;
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(t.ipv6.saddr, k->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, k->daddr, 16);
		t.ipv6.sport = k->sport;
		t.ipv6.dport = k->dport;
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return 0;
	}
	return sk;
}

/* Whether a node socket owns the packet's tuple. */
static __always_inline int node_socket(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock *sk = lookup_conn(skb, &p->tuple);

	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Hands the packet to the socket of its connection: returns 0, or -1 when
 * the node has no such socket. A TIME_WAIT socket is left to the stack's own
 * lookup (the local route reaches it). Only at tc ingress. */
static __always_inline int assign_conn(struct __sk_buff *skb, const struct ct_key *k)
{
	struct bpf_sock *sk = lookup_conn(skb, k);
	long err = 0;

	if (!sk)
		return -1;
	if (sk->state != BPF_TCP_TIME_WAIT)
		err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

/* Hands a new connection to the proxy's transparent listener on port (bound
 * to the wildcard address of the packet's family). Only at tc ingress. */
static __always_inline int assign_listener(struct __sk_buff *skb, const struct ct_key *k, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long err;

	if (is_v4_mapped(k->saddr)) {
		t.ipv4.dport = bpf_htons(port);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		t.ipv6.dport = bpf_htons(port);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return -1;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -1;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

/* Steers a TCP packet to the proxy where it enters the node (tc ingress):
 * the socket of its connection, or for a connection's first packet (a
 * retransmitted SYN too) the listener on port. */
static __always_inline int to_proxy_here(struct __sk_buff *skb, struct pkt *p, __u16 port)
{
	skb->mark = (skb->mark & ~(NM_MARK_MASK | 0xffff0000)) | NM_MARK_TO_PROXY;
	if (assign_conn(skb, &p->tuple) == 0)
		return 0;
	if (port && tcp_new_syn(p))
		return assign_listener(skb, &p->tuple, port);
	return -1;
}

/* Sends a packet seen on tc egress (to_pod) to the proxy through the
 * hairpin veth: to_proxy, on its peer's ingress, assigns it. Sets v. */
static __always_inline int to_proxy_hairpin(struct __sk_buff *skb, __u16 port, struct verdict *v)
{
	__u32 zero = 0;
	struct nm_config *c = bpf_map_lookup_elem(&config, &zero);

	if (!c || !c->hairpin_ifindex)
		return -1;
	skb->mark = (skb->mark & ~(NM_MARK_MASK | 0xffff0000)) | NM_MARK_TO_PROXY |
		    ((__u32)port << NM_MARK_PORT_SHIFT);
	v->hairpin = c->hairpin_ifindex;
	return 0;
}

static __always_inline int proxy_mark(struct __sk_buff *skb)
{
	__u32 m = skb->mark & NM_MARK_MASK;
	return m == NM_MARK_PROXY_INGRESS || m == NM_MARK_PROXY_EGRESS;
}

/* mTLS: a connection between a local pod and a mesh pod on another node,
 * allowed at L3/L4, goes through the node proxy when the pod's mode (or an
 * auth-required rule) says so: egress to the outbound listener, which
 * originates TLS with the pod's SVID, when the peer's node accepts mTLS for
 * it; ingress to the inbound listener, which terminates it (or, permissive,
 * passes a plaintext client on). No port yet (the proxy has not ACKed its
 * secrets): the redirect fails closed, never falls back to plaintext. */
static __always_inline void mtls_steer(struct endpoint_info *ep, __u8 dir, __u8 ipc_flags, struct verdict *v)
{
	__u32 zero = 0, want = dir == NM_DIR_EGRESS ? NM_EP_MTLS_ORIGINATE : NM_EP_MTLS_ACCEPT;
	struct nm_config *c;
	int mode = (ep->flags & want) && (dir == NM_DIR_INGRESS || (ipc_flags & NM_IPC_MTLS_PEER));

	if (!mode && !(v->flags & NM_EVENT_AUTH_REQUIRED))
		return;
	c = bpf_map_lookup_elem(&config, &zero);
	v->redirect = 1;
	v->flags |= NM_EVENT_MTLS;
	v->proxy_port = c ? (dir == NM_DIR_EGRESS ? c->mtls_out_port : c->mtls_in_port) : 0;
}

static __always_inline void proxy_unavailable(struct verdict *v)
{
	v->reason = NM_REASON_PROXY_UNAVAILABLE;
	v->drop = 1;
	v->to_proxy = 0;
}

/* ---- the programs ---- */

static __always_inline void frag_key_of(struct frag_key *fk, struct pkt *p, __u8 dir)
{
	copy_addr(fk->saddr, p->tuple.saddr);
	copy_addr(fk->daddr, p->tuple.daddr);
	fk->id = p->frag_id;
	fk->proto = p->tuple.proto;
	fk->dir = dir;
}

static __always_inline int finish(struct __sk_buff *skb, __u8 dir, struct verdict *v, struct pkt *p, int event)
{
	count(dir, v->reason, skb->len);
	if (event)
		emit(skb, p, dir, v);
	if (v->drop)
		return TC_ACT_SHOT;
	if (v->hairpin)
		return bpf_redirect(v->hairpin, 0);
	if (p->frag_first) {
		/* Later fragments take these ports; only a passed first
		 * fragment lets them through. */
		struct frag_key fk = {};
		struct frag_ports fp = {.sport = p->tuple.sport, .dport = p->tuple.dport};
		frag_key_of(&fk, p, dir);
		bpf_map_update_elem(&fragments, &fk, &fp, BPF_ANY);
	}
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct pkt p = {};
	struct verdict v = {};
	struct endpoint_info *ep;
	struct ipcache_key ik = {};
	struct ipcache_value *ic;
	struct ct_entry ct = {};
	__u8 *local, *remote;
	__u32 rid, pid = 0, ctflags = 0, ipc_flags = 0;
	__u64 now;

	switch (parse(skb, &p)) {
	case PKT_IP:
		break;
	case PKT_LINK_CONTROL:
		count(dir, NM_REASON_LINK_CONTROL, skb->len);
		return TC_ACT_OK;
	case PKT_UNSUPPORTED:
		v.reason = NM_REASON_UNSUPPORTED_L3;
		v.drop = 1;
		return finish(skb, dir, &v, &p, 1);
	default:
		v.reason = NM_REASON_MALFORMED;
		v.drop = 1;
		return finish(skb, dir, &v, &p, 1);
	}

	if (dir == NM_DIR_EGRESS) {
		local = p.tuple.saddr;
		remote = p.tuple.daddr;
	} else {
		local = p.tuple.daddr;
		remote = p.tuple.saddr;
	}
	ep = bpf_map_lookup_elem(&endpoints, local);
	if (!ep || ep->ifindex != skb->ifindex) {
		v.reason = dir == NM_DIR_EGRESS ? NM_REASON_SPOOFED_SOURCE : NM_REASON_UNKNOWN_ENDPOINT;
		v.drop = 1;
		return finish(skb, dir, &v, &p, 1);
	}
	v.endpoint_id = ep->endpoint_id;
	if (dir == NM_DIR_EGRESS)
		v.src_identity = ep->identity;
	else
		v.dst_identity = ep->identity;

	if (p.frag_later) {
		/* A later fragment has no L4 header: it passes exactly when
		 * the first fragment of its datagram passed this program. */
		struct frag_key fk = {};
		frag_key_of(&fk, &p, dir);
		if (!bpf_map_lookup_elem(&fragments, &fk)) {
			v.reason = NM_REASON_FRAGMENT_UNKNOWN;
			v.drop = 1;
			return finish(skb, dir, &v, &p, 1);
		}
		v.reason = NM_REASON_FRAGMENT;
		return finish(skb, dir, &v, &p, 0);
	}

	now = bpf_ktime_get_ns();
	if (dir == NM_DIR_INGRESS && proxy_mark(skb))
		p.tuple.pad = NM_CT_KEY_PROXY;
	v.reason = ct_lookup(&p, dir, now, &ct);
	if (v.reason == NM_REASON_ESTABLISHED && (ct.flags & NM_CT_REDIRECT)) {
		/* A further packet of a connection redirected to the proxy. */
		v.reason = NM_REASON_TO_PROXY;
		v.to_proxy = 1;
		if (dir == NM_DIR_EGRESS ? to_proxy_here(skb, &p, ct.proxy_port) : to_proxy_hairpin(skb, ct.proxy_port, &v)) {
			proxy_unavailable(&v);
			return finish(skb, dir, &v, &p, 1);
		}
		return finish(skb, dir, &v, &p, 0);
	}
	if (v.reason == NM_REASON_REPLY && (ct.flags & NM_CT_PROXY_UPSTREAM)) {
		/* A pod answers the proxy's upstream connection (from_pod: the
		 * entry to_pod made for it). */
		v.reason = NM_REASON_TO_PROXY;
		v.to_proxy = 1;
		if (to_proxy_here(skb, &p, 0)) {
			proxy_unavailable(&v);
			return finish(skb, dir, &v, &p, 1);
		}
		return finish(skb, dir, &v, &p, 0);
	}
	if (dir == NM_DIR_INGRESS && p.tuple.proto == IPPROTO_TCP &&
	    ((!v.reason && !tcp_new_syn(&p)) ||
	     (v.reason == NM_REASON_REPLY && (ct.flags & NM_CT_REDIRECT) && skb->ingress_ifindex)) &&
	    node_socket(skb, &p)) {
		/* A segment for a socket of the node: the proxy's upstream
		 * connection from this pod's address, answered from another
		 * node or by the proxy itself. Either this pod has no such
		 * connection, or it has one with the same tuple that was handed
		 * to this node's proxy — whose replies the proxy makes here,
		 * never through an interface (the proxy's source port is chosen
		 * by this node's kernel, the pod's by the pod's). */
		v.reason = NM_REASON_TO_PROXY;
		v.to_proxy = 1;
		if (to_proxy_hairpin(skb, 0, &v)) {
			proxy_unavailable(&v);
			return finish(skb, dir, &v, &p, 1);
		}
		return finish(skb, dir, &v, &p, 0);
	}
	if (!v.reason && p.has_inner && ct_related(&p, dir, now))
		v.reason = NM_REASON_RELATED;
	if (v.reason)
		return finish(skb, dir, &v, &p, 0);
	/* A new connection: who is the remote? */
	ik.prefixlen = 128;
	copy_addr(ik.addr, remote);
	ic = bpf_map_lookup_elem(&ipcache, &ik);
	if (ic) {
		rid = ic->identity;
		pid = ic->prefix_id;
	} else {
		/* Not in the cluster and in no policy prefix: the world. */
		const __u32 *w = (const __u32 *)remote;
		rid = (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) ? 9 : 10;
	}
	if (dir == NM_DIR_EGRESS)
		v.dst_identity = rid;
	else
		v.src_identity = rid;
	if (ic)
		ipc_flags = ic->flags;

	if (addr_eq(local, remote))
		v.reason = NM_REASON_SELF; /* a pod may always reach itself */
	else
		decide(ep->endpoint_id, dir, rid, pid, &p, &v);

	if (dir == NM_DIR_INGRESS && proxy_mark(skb)) {
		/* The node proxy's upstream connection: its replies must go back
		 * to the proxy's socket. Coming from the inbound listener, the
		 * ingress L7 rules were enforced there. */
		ctflags |= NM_CT_PROXY_UPSTREAM;
		if (v.redirect && (skb->mark & NM_MARK_MASK) == NM_MARK_PROXY_INGRESS) {
			v.redirect = 0;
			v.reason = NM_REASON_PROXY_ENFORCED;
		}
	}
	if (!v.drop && dir == NM_DIR_EGRESS && (ipc_flags & NM_IPC_NO_TUNNEL)) {
		/* Encryption is on and the destination's node has no WireGuard
		 * peer yet: never in plaintext. */
		v.reason = NM_REASON_ENCRYPTION_UNAVAILABLE;
		v.drop = 1;
		v.redirect = 0;
	}
	if (!v.drop && !v.redirect && p.tuple.proto == IPPROTO_TCP && (ipc_flags & NM_IPC_REMOTE_POD) && !proxy_mark(skb))
		mtls_steer(ep, dir, ipc_flags, &v);
	if (v.redirect) {
		v.reason = NM_REASON_TO_PROXY;
		v.to_proxy = 1;
		ctflags |= NM_CT_REDIRECT;
		if (!v.proxy_port ||
		    (dir == NM_DIR_EGRESS ? to_proxy_here(skb, &p, v.proxy_port) : to_proxy_hairpin(skb, v.proxy_port, &v)))
			proxy_unavailable(&v);
	}
	if (!v.drop)
		ct_create(&p, dir, now, ctflags, v.redirect ? v.proxy_port : 0);
	return finish(skb, dir, &v, &p, 1);
}

SEC("tcx/ingress")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, NM_DIR_EGRESS);
}

SEC("tcx/egress")
int to_pod(struct __sk_buff *skb)
{
	return handle(skb, NM_DIR_INGRESS);
}

/* The hairpin's far end (nm_net ingress): what to_pod sent to the proxy
 * enters the node here, where bpf_sk_assign works. Anything else but link
 * control is dropped: nothing else uses the hairpin. */
SEC("tcx/ingress")
int to_proxy(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct verdict v = {};
	__u16 port = skb->mark >> NM_MARK_PORT_SHIFT;

	switch (parse(skb, &p)) {
	case PKT_IP:
		break;
	case PKT_LINK_CONTROL:
		count(NM_DIR_INGRESS, NM_REASON_LINK_CONTROL, skb->len);
		return TC_ACT_OK;
	default:
		v.reason = NM_REASON_UNSUPPORTED_L3;
		v.drop = 1;
		return finish(skb, NM_DIR_INGRESS, &v, &p, 0);
	}
	if ((skb->mark & NM_MARK_MASK) != NM_MARK_TO_PROXY || p.tuple.proto != IPPROTO_TCP || p.frag_later) {
		v.reason = NM_REASON_UNSUPPORTED_L3;
		v.drop = 1;
		return finish(skb, NM_DIR_INGRESS, &v, &p, 0);
	}
	/* The veth set the type from the destination MAC, which is the pod's:
	 * the packet is for this host now. */
	bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
	v.to_proxy = 1;
	v.reason = NM_REASON_TO_PROXY;
	if (to_proxy_here(skb, &p, port)) {
		proxy_unavailable(&v);
		return finish(skb, NM_DIR_INGRESS, &v, &p, 1);
	}
	return finish(skb, NM_DIR_INGRESS, &v, &p, 0);
}
