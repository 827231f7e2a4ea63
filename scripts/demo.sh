#!/usr/bin/env bash
# make demo: checks the seed policies (examples/) offline with meshctl and
# shows, for each request of the seed scenario, its verdict and why. It also
# verifies every verdict, so `make test` runs it as an end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
M=bin/meshctl
W=examples/world.yaml
P=examples/policies
bold=$'\033[1m'; off=$'\033[0m'
[[ -t 1 ]] || { bold=; off=; }
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

step "World: examples/world.yaml (2 nodes, 5 pods); policies: examples/policies/"
echo "  backend-ingress.yaml    seed 004 + seed 003: frontend may only GET /userdata/[0-9]+ on backend:80"
echo "  backend-no-egress.yaml  what seed 004's prose says but its YAML does not: backend starts no connections"
echo "  zero-trust.yaml         seed 001's zero-trust policy, with the endpointSelector it lacked"

check() { # expected-verdict, then meshctl flow flags
	local want=$1; shift
	local out
	out=$($M policy check --world $W --policy $P "$@")
	echo "$out"
	local got
	got=$($M policy check --world $W --policy $P "$@" -o jsonl | sed -n 's/^{"verdict":"\([a-z]*\)".*/\1/p')
	[[ $got == "$want" ]] || fail "$* : want $want, got $got"
}

step "frontend GET /userdata/42 -> backend:80 (allowed by the L7 rule)"
check allowed --from default/frontend --to default/backend --port 80 --method GET --path /userdata/42
step "frontend GET /userdata/abc -> backend:80 (403: no L7 rule matches)"
check denied --from default/frontend --to default/backend --port 80 --method GET --path /userdata/abc
step "frontend POST /userdata/1 -> backend:80 (403: the method is not allowed)"
check denied --from default/frontend --to default/backend --port 80 --method POST --path /userdata/1
step "another pod -> backend:80 (dropped at L3/L4)"
check denied --from default/other --to default/backend --port 80
step "backend -> frontend:http (backend may not start connections)"
check denied --from default/backend --to default/frontend --port http
step "node-2 (the backend's own node) -> backend:80 (health checks from the node are allowed)"
check allowed --from node:node-2 --to default/backend --port 80

step "Every flow of examples/flows.jsonl, one JSON line each (-o jsonl)"
$M policy check --world $W --policy $P --flows examples/flows.jsonl -o jsonl | tee /tmp/nodemesh-demo.$$ | cut -c1-160
verdicts=$(sed -n 's/^{"verdict":"\([a-z]*\)".*/\1/p' /tmp/nodemesh-demo.$$ | tr '\n' ' ')
rm -f /tmp/nodemesh-demo.$$
want="allowed denied denied denied denied denied allowed denied denied allowed "
[[ $verdicts == "$want" ]] || fail "flows.jsonl verdicts: got '$verdicts', want '$want'"

step "Reachability matrix for TCP/80 (. allowed, X denied)"
$M policy check --world $W --policy $P --matrix --port 80

step "The seeds' YAML as published is refused, with the reason and the fix"
for f in examples/invalid/*.yaml; do
	echo "\$ meshctl policy check --policy $f ..."
	set +e
	$M policy check --world $W --policy "$f" --matrix >/dev/null 2>/tmp/nodemesh-demo-err.$$
	rc=$?
	set -e
	sed 's/^/  /' /tmp/nodemesh-demo-err.$$
	rm -f /tmp/nodemesh-demo-err.$$
	[[ $rc == 2 ]] || fail "$f: exit status $rc, want 2"
done

step "offline checks: all verdicts as expected"

step "Now on a virtual cluster: nodes and pods are network namespaces, agents enforce with eBPF"
if [[ $(id -u) -ne 0 ]]; then
	echo "  skipped: the virtual cluster needs root (network namespaces, BPF)"
else
	go run ./tests/demo
fi
