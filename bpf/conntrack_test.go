package bpf

import (
	"testing"
	"time"
)

const (
	egress  = true  // from_pod: the source pod's egress policy
	ingress = false // to_pod: the destination pod's ingress policy
)

// TestConntrackTCP: after an allowed SYN, the SYN-ACK passes both programs
// as a reply although server may open nothing and client accepts nothing;
// the connection's further packets are established; a new connection in
// the reverse direction is decided by policy (and denied).
func TestConntrackTCP(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		s := newScenario(t)
		c, srv := "client", "server"
		if v6 {
			c, srv = "client6", "server6"
		}
		sp := s.nextPort()
		syn := s.tcp(c, srv, sp, 80, tcpSYN)
		if v6 {
			syn.v6Ext = []uint8{0, 60} // hop-by-hop and destination options before TCP
		}
		s.expect("SYN", egress, syn, true, ReasonAllowed)
		s.expect("SYN", ingress, syn, true, ReasonAllowed)
		synack := s.tcp(srv, c, 80, sp, tcpSYN|tcpACK)
		s.expect("SYN-ACK", egress, synack, true, ReasonReply)
		s.expect("SYN-ACK", ingress, synack, true, ReasonReply)
		ack := s.tcp(c, srv, sp, 80, tcpACK)
		s.expect("ACK", egress, ack, true, ReasonEstablished)
		s.expect("ACK", ingress, ack, true, ReasonEstablished)

		// The same ports the other way round are a new connection, and
		// policy denies it on both sides.
		rev := s.tcp(srv, c, 80, sp, tcpSYN)
		rev.dport = 80
		rev.sport = s.nextPort()
		s.expect("reverse SYN", egress, rev, false, ReasonDefaultDeny)
		s.expect("reverse SYN", ingress, rev, false, ReasonDefaultDeny)

		// The entries: egress one seen replied to, ingress one too.
		if _, e, ok := s.ctEntry(syn, egress); !ok || e.Flags&0x1 == 0 {
			t.Fatalf("egress entry %+v (found %v): want reply seen", e, ok)
		}
		if _, e, ok := s.ctEntry(syn, ingress); !ok || e.Flags&0x1 == 0 {
			t.Fatalf("ingress entry %+v (found %v): want reply seen", e, ok)
		}
		// Closing: FIN both ways makes the short timeout apply. Each
		// packet crosses the sender's from_pod, then the receiver's to_pod.
		fin := s.tcp(c, srv, sp, 80, tcpFIN|tcpACK)
		s.expect("FIN", egress, fin, true, ReasonEstablished)
		s.expect("FIN", ingress, fin, true, ReasonEstablished)
		finBack := s.tcp(srv, c, 80, sp, tcpFIN|tcpACK)
		s.expect("FIN back", egress, finBack, true, ReasonReply)
		s.expect("FIN back", ingress, finBack, true, ReasonReply)
		if _, e, _ := s.ctEntry(syn, egress); e.Flags&0x6 != 0x6 {
			t.Fatalf("egress entry %+v: want FIN seen both ways", e)
		}
		s.age(syn, egress, 11*time.Second)
		s.expect("after close timeout", egress, ack, true, ReasonAllowed) // decided again (client may)
		s.age(syn, ingress, 11*time.Second)
		s.expect("reply after close timeout", egress, s.tcp(srv, c, 80, sp, tcpACK), false, ReasonDefaultDeny)
	}
}

// TestConntrackDeniedStaysDenied: no entry is made for a denied
// connection, so its later packets are decided, and denied, again.
func TestConntrackDeniedStaysDenied(t *testing.T) {
	s := newScenario(t)
	sp := s.nextPort()
	syn := s.tcp("other", "server", sp, 80, tcpSYN)
	s.expect("SYN", egress, syn, true, ReasonNoPolicy) // other's egress is open
	s.expect("SYN", ingress, syn, false, ReasonDefaultDeny)
	for i := range 3 {
		ack := s.tcp("other", "server", sp, 80, tcpACK)
		s.expect("later packet", egress, ack, true, ReasonEstablished)
		s.expect("later packet", ingress, ack, false, ReasonDefaultDeny)
		_ = i
	}
	if _, _, ok := s.ctEntry(syn, ingress); ok {
		t.Fatal("a denied connection has a conntrack entry")
	}
	// A pod of the allowed identity on another node is allowed.
	syn2 := s.tcp("10.0.2.10", "server", s.nextPort(), 80, tcpSYN)
	s.expect("remote client SYN", ingress, syn2, true, ReasonAllowed)
	s.expect("remote client SYN to client", ingress, s.tcp("10.0.2.10", "client", s.nextPort(), 80, tcpSYN), false, ReasonDefaultDeny)
}

// TestConntrackTimeouts: entries expire by protocol and state.
func TestConntrackTimeouts(t *testing.T) {
	s := newScenario(t)
	// TCP without a reply: 60 s.
	syn := s.tcp("client", "server", s.nextPort(), 80, tcpSYN)
	s.expect("SYN", egress, syn, true, ReasonAllowed)
	s.age(syn, egress, 59*time.Second)
	s.expect("retransmitted SYN within 60 s", egress, syn, true, ReasonEstablished)
	s.age(syn, egress, 61*time.Second)
	s.expect("retransmitted SYN after 60 s", egress, syn, true, ReasonAllowed)

	// Established TCP: 6 h.
	s.expect("SYN", ingress, syn, true, ReasonAllowed)
	s.expect("SYN-ACK", egress, s.tcp("server", "client", 80, syn.sport, tcpSYN|tcpACK), true, ReasonReply)
	s.age(syn, ingress, 5*time.Hour)
	s.expect("reply after 5 h idle", egress, s.tcp("server", "client", 80, syn.sport, tcpACK), true, ReasonReply)
	s.age(syn, ingress, 6*time.Hour+time.Second)
	s.expect("reply after 6 h idle", egress, s.tcp("server", "client", 80, syn.sport, tcpACK), false, ReasonDefaultDeny)

	// RST closes at once (10 s).
	sp := s.nextPort()
	syn = s.tcp("client", "server", sp, 80, tcpSYN)
	s.expect("SYN", ingress, syn, true, ReasonAllowed)
	s.expect("RST", egress, s.tcp("server", "client", 80, sp, tcpRST|tcpACK), true, ReasonReply)
	s.age(syn, ingress, 11*time.Second)
	s.expect("after RST", egress, s.tcp("server", "client", 80, sp, tcpACK), false, ReasonDefaultDeny)

	// A SYN reusing the ports of a closing connection is decided anew.
	sp = s.nextPort()
	syn = s.tcp("client", "server", sp, 80, tcpSYN)
	s.expect("SYN", egress, syn, true, ReasonAllowed)
	s.expect("RST", ingress, s.tcp("server", "client", 80, sp, tcpRST), true, ReasonReply)
	s.expect("new SYN, same ports", egress, syn, true, ReasonAllowed)

	// UDP: 60 s.
	q := s.udp("client", "server", s.nextPort(), 53)
	s.expect("query", ingress, q, true, ReasonAllowed)
	answer := s.udp("server", "client", 53, q.sport)
	s.expect("answer", egress, answer, true, ReasonReply)
	s.age(q, ingress, 61*time.Second)
	s.expect("late answer", egress, answer, false, ReasonDefaultDeny)

	// ICMP echo: 30 s.
	ping := s.echo("client", "server", 77, false)
	s.expect("echo", ingress, ping, true, ReasonAllowed)
	s.age(ping, ingress, 31*time.Second)
	s.expect("late echo reply", egress, s.echo("server", "client", 77, true), false, ReasonDefaultDeny)
}

// TestConntrackUDPAndICMP: replies of UDP and ICMP echo pass; an echo
// request the other way is policy's business.
func TestConntrackUDPAndICMP(t *testing.T) {
	s := newScenario(t)
	q := s.udp("client", "server", s.nextPort(), 53)
	s.expect("query", egress, q, true, ReasonAllowed)
	s.expect("query", ingress, q, true, ReasonAllowed)
	a := s.udp("server", "client", 53, q.sport)
	s.expect("answer", egress, a, true, ReasonReply)
	s.expect("answer", ingress, a, true, ReasonReply)
	s.expect("wrong port", egress, s.udp("client", "server", q.sport, 54), false, ReasonDefaultDeny)

	for _, names := range [][2]string{{"client", "server"}, {"client6", "server6"}} {
		c, srv := names[0], names[1]
		id := s.nextPort()
		s.expect("echo request "+c, egress, s.echo(c, srv, id, false), true, ReasonAllowed)
		s.expect("echo request "+c, ingress, s.echo(c, srv, id, false), true, ReasonAllowed)
		s.expect("echo reply "+c, egress, s.echo(srv, c, id, true), true, ReasonReply)
		s.expect("echo reply "+c, ingress, s.echo(srv, c, id, true), true, ReasonReply)
		s.expect("echo reply, other id", ingress, s.echo(srv, c, id+1000, true), false, ReasonDefaultDeny)
		s.expect("echo request back, same id", egress, s.echo(srv, c, id, false), false, ReasonDefaultDeny)
		s.expect("echo request back, same id", ingress, s.echo(srv, c, id, false), false, ReasonDefaultDeny)
		s.expect("echo request back", egress, s.echo(srv, c, s.nextPort(), false), false, ReasonDefaultDeny)
	}
}

// TestConntrackRelatedICMP: an ICMP error about a tracked connection
// passes (path MTU discovery, port unreachable); one about anything else is
// decided by policy.
func TestConntrackRelatedICMP(t *testing.T) {
	s := newScenario(t)
	for _, v6 := range []bool{false, true} {
		c, world, router := "client", "203.0.113.5", "198.51.100.1"
		errType := uint8(3) // destination unreachable
		proto := uint8(ipprotoICMP)
		if v6 {
			c, world, router = "client6", "2001:db8::5", "2001:db8:1::1"
			errType, proto = 1, ipprotoICMPv6
		}
		dgram := s.udp(c, world, s.nextPort(), 9999)
		s.expect("datagram to the world", egress, dgram, true, ReasonAllowed)
		unreach := pkt{src: s.addr(router), dst: s.addr(c), proto: proto, icmpType: errType, embedded: dgram.ipDatagram()}
		s.expect("ICMP error about it", ingress, unreach, true, ReasonRelated)

		other := s.udp(c, world, s.nextPort(), 9998) // never sent, never tracked
		unreach.embedded = other.ipDatagram()
		s.expect("ICMP error about another datagram", ingress, unreach, false, ReasonDefaultDeny)

		// An error addressed to one pod about another's connection.
		unreach.embedded = dgram.ipDatagram()
		unreach.dst = s.addr("server")
		if v6 {
			unreach.dst = s.addr("server6")
		}
		s.expect("ICMP error to the wrong pod", ingress, unreach, false, ReasonDefaultDeny)
	}
	// The pod answers a datagram it received with an error: related in
	// from_pod.
	q := s.udp("client", "server", s.nextPort(), 53)
	s.expect("query", ingress, q, true, ReasonAllowed)
	portUnreach := pkt{src: s.addr("server"), dst: s.addr("client"), proto: ipprotoICMP, icmpType: 3, embedded: q.ipDatagram()}
	s.expect("port unreachable from server", egress, portUnreach, true, ReasonRelated)
}
