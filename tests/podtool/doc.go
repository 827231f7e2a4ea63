// Package podtool is what test pods run: servers (TCP and UDP echo, HTTP,
// request/response and bulk sinks, SCTP echo where the kernel has SCTP) and
// the matching clients, each bounded in time and count. cmd/nodemesh-podtool
// wraps it as one static binary that tests start inside pod network
// namespaces (see tests/vcluster).
//
// Clients never fail silently: every call returns a result that says whether
// the exchange worked and, when it did not, a Reason that separates a
// rejected connection ("refused", a RST or ICMP port unreachable) from a
// dropped one ("timeout") — the distinction policy tests assert on.
package podtool
