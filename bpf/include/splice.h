/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The layouts shared by the socket splice programs (splice.c) and their Go
 * loader (splice.go). bpf2go turns these into Go types (splice_bpfel.go), so
 * the two cannot disagree.
 */
#ifndef NODEMESH_SPLICE_H
#define NODEMESH_SPLICE_H

#include <linux/types.h>

/* Which end of a proxied connection a socket is. Every key carries it, and a
 * socket only ever looks up the other side, so two pod sockets (a pod-to-pod
 * connection that no proxy terminates) never find each other. */
enum splice_side {
	SPLICE_SIDE_NONE = 0,
	SPLICE_SIDE_POD = 1,   /* a socket of a pod */
	SPLICE_SIDE_PROXY = 2, /* a socket of the node's L7 proxy */
};

/* The sockhash key: a socket's own 4-tuple and side, and its sequence
 * numbers when it was established. A socket's peer is found under the
 * mirrored tuple, the other side and the same sequence numbers swapped (its
 * snd_nxt is ours rcv_nxt and the reverse, as long as no byte went through
 * TCP). The sequence numbers make a key name one incarnation of a
 * connection: a socket that was reset but not closed yet, whose tuple a new
 * connection reuses, has other ones, so no one finds it. Unused address
 * words and pad are zero; an IPv4-mapped IPv6 socket is keyed as IPv4, so a
 * dual-stack listener's accepted socket matches its IPv4 peer. */
struct sock_key {
	__u32 local_ip[4];  /* network byte order; IPv4 in local_ip[0] */
	__u32 remote_ip[4]; /* network byte order; IPv4 in remote_ip[0] */
	__u32 snd_nxt0;     /* snd_nxt when established */
	__u32 rcv_nxt0;     /* rcv_nxt when established */
	__u16 local_port;   /* host byte order */
	__u16 remote_port;  /* host byte order */
	__u8 family;        /* 4 or 6 */
	__u8 side;          /* enum splice_side */
	__u8 pad[2];
};

/* What a socket's sends do; decided once, at its first message. */
enum splice_mode {
	SPLICE_MODE_UNDECIDED = 0, /* in the map, nothing sent yet */
	SPLICE_MODE_SPLICED = 1,   /* every message goes to the peer's receive queue */
	SPLICE_MODE_TCP = 2,       /* every message goes through TCP, for life */
};

/* Per-socket state (socket local storage), written once when the socket is
 * established except mode, which only the socket's own sends change (they
 * run under the socket lock). */
struct sock_state {
	__u32 snd_nxt0; /* as in its key */
	__u32 rcv_nxt0;
	__u8 side;      /* enum splice_side; 0 until a program saw the socket */
	__u8 mode;      /* enum splice_mode */
	__u8 taken;     /* established and handled by the program of side */
	__u8 pad;
};

/* Counters, one per-CPU slot each. Go: SpliceStats. */
enum splice_counter {
	SPLICE_C_POD_SOCKETS = 0,   /* pod sockets put in the map */
	SPLICE_C_PROXY_SOCKETS = 1, /* proxy sockets put in the map */
	SPLICE_C_INSERT_FAILED = 2, /* established sockets left out of the map */
	SPLICE_C_SPLICED = 3,       /* sockets whose first message found the peer */
	SPLICE_C_TCP = 4,           /* sockets whose first message did not */
	SPLICE_C_MESSAGES = 5,      /* messages redirected */
	SPLICE_C_BYTES = 6,         /* bytes redirected */
	SPLICE_C_TCP_MESSAGES = 7,  /* messages of sockets in the map sent through TCP */
	SPLICE_C_TCP_BYTES = 8,
	SPLICE_C_PEER_GONE = 9,     /* messages of spliced sockets whose peer was gone */
	SPLICE_C_POD_OTHER = 10,    /* pod sockets not connected to the proxy: left alone */
	SPLICE_C_MAX = 11,
};

#endif /* NODEMESH_SPLICE_H */
