#!/usr/bin/env bash
# make demo: two containers (network namespaces) on one bridge, with our `bridge` + `host-local`
# and the config of conf-examples/bridge-host-local.conflist, exactly as a runtime drives them.
#
# The real host is left alone: the "node" side (the bridge, the host veths, the forwarding sysctl,
# the masquerade rules) lives in a third namespace made for the demo, and the ping stays between
# the two containers. Leases go to a temporary directory. Everything is removed at the end, also
# when a step fails.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${SWIFT_CNI_BIN:-$repo/bin}
[ -d "$bin_dir" ] && bin_dir=$(cd "$bin_dir" && pwd)
example=${DEMO_CONFIG:-$repo/conf-examples/bridge-host-local.conflist}

die() { echo "demo: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (it creates network namespaces); run: sudo make demo"
for plugin in bridge host-local; do
    [ -x "$bin_dir/$plugin" ] || die "$bin_dir/$plugin is missing; run: make build"
done
for tool in ip bridge ping; do
    command -v "$tool" >/dev/null || die "'$tool' is missing; run: make deps (iproute2, iputils-ping)"
done

suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
node=cni-demo-node-$suffix
containers=(cni-demo-a-$suffix cni-demo-b-$suffix)
bridge=cni-demo-$suffix
work=$(mktemp -d /tmp/cni-demo.XXXXXX)

# The runtime's part: the plugin config of the list, with the list's name and cniVersion injected.
# The example's bridge name and dataDir are replaced so the demo never meets a real network.
plugin_config() {
    local version name
    version=$(sed -n 's/^  "cniVersion": *"\([^"]*\)".*/\1/p' "$example")
    name=$(sed -n 's/^  "name": *"\([^"]*\)".*/\1/p' "$example")
    awk '/"plugins": *\[/ {inside=1; next} inside && /^  \]/ {inside=0} inside' "$example" \
        | sed -e "0,/{/s//{ \"cniVersion\": \"$version\", \"name\": \"$name\",/" \
              -e "s|\"bridge\": *\"[^\"]*\"|\"bridge\": \"$bridge\"|" \
              -e "s|\"dataDir\": *\"[^\"]*\"|\"dataDir\": \"$work/leases\"|"
}

cni() { # cni COMMAND CONTAINER-NAMESPACE CONTAINER-ID
    ip netns exec "$node" env CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="/run/netns/$2" \
        CNI_IFNAME=eth0 CNI_PATH="$bin_dir" "$bin_dir/bridge" <"$work/config.json"
}

cleanup() {
    local status=$?
    set +e
    echo
    echo "== cleanup"
    for index in 0 1; do
        if [ -e "/run/netns/${containers[$index]}" ]; then
            cni DEL "${containers[$index]}" "demo-$index" >/dev/null && echo "DEL demo-$index: ok"
        fi
    done
    for ns in "${containers[@]}" "$node"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$work"
    echo "removed namespaces, bridge $bridge, leases and rules"
    [ $status -eq 0 ] && echo "demo: OK" || echo "demo: FAILED (status $status)"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

plugin_config >"$work/config.json"
echo "== config (from ${example#$repo/}, bridge and dataDir replaced)"
cat "$work/config.json"

ip netns add "$node"
ip -n "$node" link set lo up
for ns in "${containers[@]}"; do ip netns add "$ns"; done

addresses=()
for index in 0 1; do
    echo
    echo "== ADD demo-$index (netns ${containers[$index]})"
    result=$(cni ADD "${containers[$index]}" "demo-$index") || die "ADD failed: $result"
    echo "$result"
    address=$(echo "$result" | sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p' | head -n1)
    [ -n "$address" ] || die "no IPv4 address in the result"
    addresses+=("$address")
done

echo
echo "== ping ${addresses[1]} (demo-1) from demo-0"
ip netns exec "${containers[0]}" ping -c 3 -i 0.2 -W 2 "${addresses[1]}"

echo
for index in 0 1; do
    echo "== ip -br addr in demo-$index"
    ip -n "${containers[$index]}" -br addr
done
echo "== ip -br addr on the node side"
ip -n "$node" -br addr
echo "== bridge link"
ip netns exec "$node" bridge link
echo "== masquerade rules (iptables -t nat)"
ip netns exec "$node" iptables-save -t nat 2>/dev/null | grep -- "CNI-" || echo "(none)"
echo "== leases"
ls "$work/leases"/*
