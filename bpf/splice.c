//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Nodemesh socket splice: on one node, the bytes a pod's socket sends to the
 * node's L7 proxy (and back) skip TCP/IP and the veth, and land directly in
 * the peer socket's receive queue.
 *
 *   splice_proxy_sockops  cgroup sock_ops on the proxy's cgroup directory
 *       records the 4-tuple of every connection the proxy accepts (at the
 *       SYN) or opens (at connect) in splice_proxy_peers; when one of its
 *       TCP sockets is established, puts it in splice_socks
 *   splice_pod_sockops    cgroup sock_ops on the pods' cgroup directory
 *       when a pod's TCP socket is established, puts it in splice_socks if
 *       splice_proxy_peers has its connection, and leaves it alone
 *       otherwise (pod to pod, or off the node)
 *   splice_msg            sk_msg verdict of splice_socks
 *       on every sendmsg of a socket in the map: look up its peer (the
 *       mirrored key, the OTHER side) and redirect the message to the
 *       peer's receive queue (BPF_F_INGRESS), or let it through TCP
 *
 * Keys. A socket is keyed by its 4-tuple, its side (pod or proxy: which
 * program took it) and its sequence numbers when it was established. Its
 * peer is found under the tuple mirrored, the other side and the sequence
 * numbers swapped: the two ends of one connection have each other's. So a
 * lookup finds only the live incarnation of the connection, never a socket
 * that was reset but not closed yet and whose tuple a new connection
 * reuses (the kernel keeps sockets in the map until they are closed, and
 * removes them then; the programs never delete a socket, which would drop
 * what is queued for it).
 *
 * Ordering. A receiving socket reads redirected messages before anything
 * in its TCP receive queue (tcp_bpf_recvmsg), so a sender must never mix
 * the two paths: bytes it sent through TCP could still be in flight or
 * unread when redirected ones arrive, and would be overtaken. Each socket
 * therefore decides ONCE, at its first message, and keeps that mode for
 * life: spliced only if it has never handed a byte to TCP (no data in the
 * SYN, write_seq unmoved since establishment) and its peer is in the map
 * then; otherwise TCP for good, even when the peer appears a moment later.
 * The two directions of a connection decide independently; each receiver
 * gets its data from one path only. Once spliced, a socket keeps
 * redirecting until it sends its FIN (then the stack answers its sends) or
 * its peer closes (the message goes to TCP and meets the reset it would
 * have met without the splice).
 *
 * Pod-to-pod connections are never spliced: a pod socket looks only for
 * proxy sockets, and is not even put in the map unless the proxy is its
 * peer. The tc programs must see those packets: their policy, conntrack,
 * counters and flow events are the only enforcement and accounting such a
 * connection gets, whereas what a pod exchanges with the proxy is enforced
 * by the proxy, which reads every byte.
 *
 * What a socket in the map changes for its program (kernel behaviour, not
 * ours): redirected bytes are invisible to splice(2) and other readers of
 * the TCP receive queue (tcp_read_sock), which then see the FIN first; and
 * a blocking read may fail with EAGAIN when woken without data (a signal).
 * Programs that read with poll/epoll and read(2)/recvmsg(2), as Envoy
 * does, are unaffected. Pods whose programs do either should not be
 * attached (attach pod directories one by one).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "splice.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define AF_INET6 10

/* Sockets of one node's pods and proxy. A full map leaves new sockets on
 * TCP (insert-failed). */
#define SPLICE_MAX_SOCKETS 131072

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SPLICE_MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, __u64); /* user space reads socket cookies */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} splice_socks SEC(".maps");

/* 4-tuples (as the proxy sees them; sequence numbers 0) of connections
 * the proxy accepts or opens, recorded before the pod's end is
 * established: the pods' program takes only sockets found here, so a
 * pod's other connections never enter splice_socks. An
 * entry that lingers is harmless (tuples are matched only as a hint), one
 * evicted too early leaves its connection on TCP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SPLICE_MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} splice_proxy_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} splice_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SPLICE_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} splice_counters SEC(".maps");

/* Carry the enums to bpf2go (-type), which finds only types in BTF. */
const enum splice_counter *unused_splice_counter __attribute__((unused));
const enum splice_side *unused_splice_side __attribute__((unused));
const enum splice_mode *unused_splice_mode __attribute__((unused));

/* The field of the kernel's tcp_sock the first message checks; CO-RE
 * relocates it against the running kernel's BTF. */
struct tcp_sock___splice {
	__u32 write_seq;
} __attribute__((preserve_access_index));

static __always_inline void count(__u32 c, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&splice_counters, &c);

	if (v)
		*v += n;
}

static __always_inline int is_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

/*
 * Fill a key from a sock_ops or sk_msg context (the fields have the same
 * names and meaning) and the socket's state; 0 when the socket is neither
 * IPv4 nor IPv6. The
 * context's remote_port holds the network-order port in its upper 16 bits
 * on little-endian machines (the kernel shifts it there), so ntohl yields
 * it in host order. Context fields can only be read at constant offsets,
 * hence a macro rather than a function taking the context.
 */
#define fill_key(k, c, s)                                                      \
	({                                                                     \
		int ok_ = 1;                                                   \
		__builtin_memset((k), 0, sizeof(*(k)));                        \
		(k)->side = (s)->side;                                         \
		(k)->snd_nxt0 = (s)->snd_nxt0;                                 \
		(k)->rcv_nxt0 = (s)->rcv_nxt0;                                 \
		(k)->local_port = (__u16)(c)->local_port;                      \
		(k)->remote_port = (__u16)bpf_ntohl((c)->remote_port);         \
		if ((c)->family == AF_INET) {                                  \
			(k)->family = 4;                                       \
			(k)->local_ip[0] = (c)->local_ip4;                     \
			(k)->remote_ip[0] = (c)->remote_ip4;                   \
		} else if ((c)->family == AF_INET6) {                          \
			__u32 l0_ = (c)->local_ip6[0], l1_ = (c)->local_ip6[1]; \
			__u32 l2_ = (c)->local_ip6[2], l3_ = (c)->local_ip6[3]; \
			__u32 r0_ = (c)->remote_ip6[0], r1_ = (c)->remote_ip6[1]; \
			__u32 r2_ = (c)->remote_ip6[2], r3_ = (c)->remote_ip6[3]; \
			if (is_v4_mapped(l0_, l1_, l2_) &&                     \
			    is_v4_mapped(r0_, r1_, r2_)) {                     \
				(k)->family = 4;                               \
				(k)->local_ip[0] = l3_;                        \
				(k)->remote_ip[0] = r3_;                       \
			} else {                                               \
				(k)->family = 6;                               \
				(k)->local_ip[0] = l0_;                        \
				(k)->local_ip[1] = l1_;                        \
				(k)->local_ip[2] = l2_;                        \
				(k)->local_ip[3] = l3_;                        \
				(k)->remote_ip[0] = r0_;                       \
				(k)->remote_ip[1] = r1_;                       \
				(k)->remote_ip[2] = r2_;                       \
				(k)->remote_ip[3] = r3_;                       \
			}                                                      \
		} else {                                                       \
			ok_ = 0;                                               \
		}                                                              \
		ok_;                                                           \
	})

/* The key under which a socket's peer is: the tuple mirrored, the other
 * side, the sequence numbers swapped. */
static __always_inline void mirror(struct sock_key *peer, const struct sock_key *k)
{
	__builtin_memset(peer, 0, sizeof(*peer));
	peer->family = k->family;
	peer->side = k->side == SPLICE_SIDE_POD ? SPLICE_SIDE_PROXY : SPLICE_SIDE_POD;
	peer->snd_nxt0 = k->rcv_nxt0;
	peer->rcv_nxt0 = k->snd_nxt0;
	peer->local_port = k->remote_port;
	peer->remote_port = k->local_port;
	peer->local_ip[0] = k->remote_ip[0];
	peer->local_ip[1] = k->remote_ip[1];
	peer->local_ip[2] = k->remote_ip[2];
	peer->local_ip[3] = k->remote_ip[3];
	peer->remote_ip[0] = k->local_ip[0];
	peer->remote_ip[1] = k->local_ip[1];
	peer->remote_ip[2] = k->local_ip[2];
	peer->remote_ip[3] = k->local_ip[3];
}

/* Fill the proxy-peer key of a connection from the proxy's end. */
#define fill_tuple(k, c)                                                       \
	({                                                                     \
		struct sock_state z_ = { .side = SPLICE_SIDE_PROXY };          \
		fill_key(k, c, &z_);                                           \
	})

/* Record that the proxy accepts (a request socket, when its SYN arrives)
 * or opens (before its SYN leaves) a connection. */
static __always_inline void record_proxy_peer(struct bpf_sock_ops *ctx)
{
	struct sock_key key;
	__u8 one = 1;

	if (fill_tuple(&key, ctx))
		bpf_map_update_elem(&splice_proxy_peers, &key, &one, BPF_ANY);
}

/*
 * A socket's side is that of the first program to see it. The programs of
 * a socket's own cgroup run before those of its ancestors, so when the
 * pods' and the proxy's directories nest (or one directory is attached
 * twice), the nearest attachment decides, and the others leave the socket
 * alone. A connecting socket is claimed when it connects, an accepted one
 * when it is established.
 */
static __always_inline struct sock_state *claim(struct bpf_sock_ops *ctx, __u8 side)
{
	struct sock_state *st;

	if (!ctx->sk || (ctx->family != AF_INET && ctx->family != AF_INET6))
		return 0;
	st = bpf_sk_storage_get(&splice_state, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	if (st->side == SPLICE_SIDE_NONE)
		st->side = side;
	return st->side == side ? st : 0;
}

/* The state of an established socket of side, now taken (once); NULL if
 * it is another side's, taken already, or no IP socket. */
static __always_inline struct sock_state *take(struct bpf_sock_ops *ctx, __u8 side)
{
	struct sock_state *st = claim(ctx, side);

	if (!st || st->taken)
		return 0;
	st->taken = 1;
	st->snd_nxt0 = ctx->snd_nxt;
	st->rcv_nxt0 = ctx->rcv_nxt;
	/* Data in the SYN (TCP Fast Open) went through TCP already. */
	if (ctx->data_segs_out) {
		st->mode = SPLICE_MODE_TCP;
		count(SPLICE_C_TCP, 1);
	}
	return st;
}

/* Put an established socket in the map. */
static __always_inline void insert(struct bpf_sock_ops *ctx, struct sock_state *st)
{
	struct sock_key key;

	if (!fill_key(&key, ctx, st))
		return;
	/* Never replace an entry: that would drop what is queued for the
	 * socket in it. A taken key (the same connection seen twice) leaves
	 * this socket out, on TCP. */
	if (bpf_sock_hash_update(ctx, &splice_socks, &key, BPF_NOEXIST)) {
		if (st->mode != SPLICE_MODE_TCP)
			count(SPLICE_C_TCP, 1);
		st->mode = SPLICE_MODE_TCP;
		count(SPLICE_C_INSERT_FAILED, 1);
		return;
	}
	count(st->side == SPLICE_SIDE_POD ? SPLICE_C_POD_SOCKETS : SPLICE_C_PROXY_SOCKETS, 1);
}

SEC("sockops")
int splice_pod_sockops(struct bpf_sock_ops *ctx)
{
	struct sock_key tuple, peer;
	struct sock_state *st;

	if (ctx->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		claim(ctx, SPLICE_SIDE_POD);
		return 1;
	}
	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    ctx->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	st = take(ctx, SPLICE_SIDE_POD);
	if (!st)
		return 1;
	/* Only a connection with the proxy: the proxy recorded it before
	 * this end could be established (a client's SYN reached the proxy's
	 * listener before the SYN-ACK came back; the proxy's connect ran
	 * before its SYN left). A socket in the map reads through tcp_bpf,
	 * whose blocking reads can fail with EAGAIN: other connections must
	 * not pay for a splice they cannot have. */
	if (!fill_tuple(&tuple, ctx))
		return 1;
	mirror(&peer, &tuple); /* tuple's side is the proxy's: so is its mirror's */
	peer.side = SPLICE_SIDE_PROXY;
	if (!bpf_map_lookup_elem(&splice_proxy_peers, &peer)) {
		st->mode = SPLICE_MODE_TCP;
		count(SPLICE_C_POD_OTHER, 1);
		return 1;
	}
	insert(ctx, st);
	return 1;
}

SEC("sockops")
int splice_proxy_sockops(struct bpf_sock_ops *ctx)
{
	struct sock_state *st;

	switch (ctx->op) {
	case BPF_SOCK_OPS_TIMEOUT_INIT:
		/* Called for the request socket of an incoming SYN (and for
		 * connecting sockets, recorded below). */
		if (!ctx->is_fullsock)
			record_proxy_peer(ctx);
		return 1;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (claim(ctx, SPLICE_SIDE_PROXY))
			record_proxy_peer(ctx);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		st = take(ctx, SPLICE_SIDE_PROXY);
		if (st)
			insert(ctx, st);
		return 1;
	}
	return 1;
}

/* Whether a socket in this state may send: it has not sent its FIN. */
static __always_inline int can_send(__u32 state)
{
	return state == BPF_TCP_ESTABLISHED || state == BPF_TCP_CLOSE_WAIT;
}

SEC("sk_msg")
int splice_msg(struct sk_msg_md *msg)
{
	struct sock_key key, pkey;
	struct sock_state *st;
	struct bpf_sock *sk;
	__u32 size = msg->size;

	sk = msg->sk;
	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&splice_state, sk, 0, 0);
	if (!st || st->mode == SPLICE_MODE_TCP ||
	    (st->side != SPLICE_SIDE_POD && st->side != SPLICE_SIDE_PROXY))
		goto tcp;
	/* After our FIN, or a reset, the stack answers the send (EPIPE,
	 * ECONNRESET) as it would without the splice. */
	if (!can_send(sk->state))
		goto tcp;
	if (!fill_key(&key, msg, st))
		goto tcp;
	mirror(&pkey, &key);

	if (st->mode == SPLICE_MODE_UNDECIDED) {
		struct tcp_sock___splice *tp = (void *)bpf_skc_to_tcp_sock(sk);

		/* Splice only a socket that has handed TCP nothing: a send
		 * that began before establishment (and waited for it) did
		 * not run this program, but moved write_seq. */
		if (tp && tp->write_seq == st->snd_nxt0 &&
		    bpf_msg_redirect_hash(msg, &splice_socks, &pkey, BPF_F_INGRESS) == SK_PASS) {
			st->mode = SPLICE_MODE_SPLICED;
			count(SPLICE_C_SPLICED, 1);
			goto spliced;
		}
		st->mode = SPLICE_MODE_TCP;
		count(SPLICE_C_TCP, 1);
		goto tcp;
	}

	/* Spliced. A peer that is gone was closed (and so left the map):
	 * through TCP, the message meets the reset it would have met
	 * without the splice. */
	if (bpf_msg_redirect_hash(msg, &splice_socks, &pkey, BPF_F_INGRESS) != SK_PASS) {
		count(SPLICE_C_PEER_GONE, 1);
		goto tcp;
	}
spliced:
	count(SPLICE_C_MESSAGES, 1);
	count(SPLICE_C_BYTES, size);
	return SK_PASS;
tcp:
	count(SPLICE_C_TCP_MESSAGES, 1);
	count(SPLICE_C_TCP_BYTES, size);
	return SK_PASS;
}
