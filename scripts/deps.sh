#!/usr/bin/env bash
# Installs the Debian packages Nodemesh's build, tests and demo need, only
# those missing, so that `make demo` and `make test` work on a fresh Debian
# machine with Go. Run as root (CI is root).
set -euo pipefail

# Debian package names. Each later capability adds its own here.
packages=(
	make git          # build
	clang llvm libbpf-dev bpftool  # make generate: BPF objects (bpf2go)
	iproute2 procps util-linux     # the virtual cluster: ip netns, sysctl, nsenter, mount
	iptables          # make bench: the iptables comparison; tests/l7bench: TPROXY
	haproxy wrk       # tests/l7bench: the L7 proxy comparison and its load generator
	tcpdump           # tests/e2e: capture the underlay to prove mTLS flows carry no plaintext
	wireguard-go wireguard-tools  # wireguard: the benchmark's comparison peer (Debian's userspace WireGuard)
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "deps: missing Debian packages: ${missing[*]}; run 'make deps' as root" >&2
	exit 1
fi
echo ">> installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
