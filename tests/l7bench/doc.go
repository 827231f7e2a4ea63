// Package l7bench compares nodemesh-proxy with HAProxy as the node's HTTP
// policy proxy (issue 4 §7), on a topology it builds itself out of three
// network namespaces:
//
//	client ns                 proxy ns                                  server ns
//	wrk ── eth0 10.201.1.2 ══ to-cli 10.201.1.1   to-srv 10.201.2.1 ══ eth0 10.201.2.2 ── backend :80, :81
//	                          │ TPROXY tcp → 10.201.2.2:80 ⇒ :15006 (mark 0x200/0xf00,
//	                          │   ip rule → local table 2004): nodemesh-proxy's
//	                          │   transparent inbound listener, which sees the
//	                          │   original destination as its local address
//	                          └ HAProxy on 10.201.1.1:8080, a plain reverse proxy
//
// This is the nearest real thing to the production redirect, where the
// datapath assigns the connection to the same listener with bpf_sk_assign
// (same mark, same local table). nodemesh-proxy (cmd/nodemesh-proxy, built
// from this tree) takes its configuration over xDS from xds.Server exactly
// as from the agent: the world and a CiliumNetworkPolicy allowing the
// client `GET /userdata/[0-9]+` to the server's port 80 go through the
// policy engine and xds.InputFromEngine. HAProxy enforces the same rule with
// an ACL (403 otherwise). The backend answers 1 KiB; wrk sends keep-alive
// HTTP/1.1 GET /userdata/42.
//
// TestThroughTPROXY (part of `make test`, root) proves the setup in one short
// round: the steering, the original destination, 200 and 403 from both
// proxies, a 2-second wrk run through each. BenchmarkL7Proxy (`make
// bench-proxy`) measures; docs/benchmarks.md has the method and figures.
//
// Everything lives in namespaces named nml7-<pid>-<n>-{c,p,s}, with
// scratch files in $TMPDIR/nml7-<pid>-…-d; the root namespace gets no
// address, route or rule. Close deletes them (and with them the links,
// routes, rules and iptables rules) and stops every process started in
// them; what a run that died left behind, the next one removes (Sweep). The
// backend, and for profiling package proxy itself, are this test binary
// started again in a role (RunRole).
//
// # Files
//
//	topology.go  the namespaces, TPROXY steering, processes in a namespace, Sweep
//	backend.go   the backend HTTP/1.1 server
//	nodemesh.go  world and policy → xds.Input, the xDS server, nodemesh-proxy
//	haproxy.go   HAProxy's configuration and process
//	wrk.go       wrk runs and their summary
//	check.go     single requests and the policy check both proxies must pass
//	stats.go     runs, medians, paired ratios
//	roles.go     the test binary as backend or as profiled proxy
package l7bench
