#!/usr/bin/env bash
# make cluster-demo: three "nodes" on one L2 segment sharing one cluster pool through etcd.
#
# What runs: a private etcd (Debian's etcd-server) on a free loopback port with its data in a
# temporary directory; a segment namespace holding a bridge; three node namespaces, each with an
# eth0 on the segment, a block of 10.251.0.0/24 claimed in etcd by cluster-ipam, a
# container bridge made by our bridge plugin and one container addressed from the node's block.
# `cnictl cluster routes --apply` on each node installs the routes to the other nodes' blocks
# (proto 201), and the container on node A pings the one on node C.
#
# etcd listens on the host's loopback only: cnictl runs in the host namespace for every store
# call, and `routes --apply --netns` opens just its netlink socket inside each node. Nothing else
# of the real host is touched; everything (namespaces, etcd, files) is removed at the end, also
# when a step fails.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${SWIFT_CNI_BIN:-$repo/bin}
[ -d "$bin_dir" ] && bin_dir=$(cd "$bin_dir" && pwd)
pool=10.251.0.0/24

die() { echo "cluster-demo: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (it creates network namespaces); run: sudo make cluster-demo"
for program in bridge cluster-ipam cnictl; do
    [ -x "$bin_dir/$program" ] || die "$bin_dir/$program is missing; run: make build"
done
for tool in ip ping etcd python3; do
    command -v "$tool" >/dev/null || die "'$tool' is missing; run: make deps (iproute2, iputils-ping, etcd-server)"
done

suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
segment=cdemo-seg-$suffix
work=$(mktemp -d /tmp/cni-cluster-demo.XXXXXX)
prefix=/swift-cni-demo-$suffix/
etcd_pid=
namespaces=("$segment")

cleanup() {
    local status=$?
    set +e
    echo
    echo "== cleanup"
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null; fi
    rm -rf "$work"
    echo "stopped etcd (pid ${etcd_pid:-none}); removed ${#namespaces[@]} namespaces and $work"
    [ "$status" -eq 0 ] && echo "cluster-demo: ok" || echo "cluster-demo: FAILED (status $status)"
    exit "$status"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port=$(free_port)
peer_port=$(free_port)
endpoint=http://127.0.0.1:$client_port

echo "== etcd on $endpoint (data in $work/etcd)"
etcd --name demo --data-dir "$work/etcd" --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "demo=http://127.0.0.1:$peer_port" --log-level warn --logger zap >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
    curl -sf -X POST -d '{}' "$endpoint/v3/maintenance/status" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf -X POST -d '{}' "$endpoint/v3/maintenance/status" >/dev/null || { cat "$work/etcd.log"; die "etcd did not start"; }
store=(--endpoints "$endpoint" --prefix "$prefix")

echo "== segment $segment: bridge lan0"
ip netns add "$segment"
ip -n "$segment" link add lan0 type bridge
ip -n "$segment" link set lan0 up

declare -A node_ns container_ns container_ip
for index in 1 2 3; do
    letter=$(echo abc | cut -c"$index")
    node=node-$letter
    ns=cdemo-$letter-$suffix
    ctr=cdemo-ctr-$letter-$suffix
    node_ns[$letter]=$ns
    container_ns[$letter]=$ctr
    namespaces+=("$ns" "$ctr")
    ip netns add "$ns"
    ip netns add "$ctr"
    ip -n "$ns" link set lo up
    ip link add eth0 netns "$ns" type veth peer name "seg$letter$suffix" netns "$segment"
    ip -n "$segment" link set "seg$letter$suffix" master lan0 up
    ip -n "$ns" addr add "10.250.77.$index/24" dev eth0
    ip -n "$ns" link set eth0 up

    # The network config every step uses: our bridge with cluster-ipam, this node's name and IP.
    cat >"$work/$letter.json" <<EOF
{"cniVersion": "1.0.0", "name": "cluster-demo", "type": "bridge", "bridge": "cbr0", "isGateway": true,
 "ipam": {"type": "cluster-ipam", "etcd": {"endpoints": ["$endpoint"], "prefix": "$prefix"}, "node": "$node",
          "nodeIPs": ["10.250.77.$index"], "leaseTTL": 600, "pools": [{"subnet": "$pool", "blockSize": 26}],
          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$work/leases-$letter"}}
EOF
    # The node's first address claims its block; that runs here, in the host namespace, where
    # etcd listens. The container's ADD inside the node then needs no store (the block has room).
    first=$(env CNI_COMMAND=ADD CNI_CONTAINERID="reserve-$letter" CNI_NETNS=/run/netns/unused CNI_IFNAME=eth0 \
        CNI_PATH="$bin_dir" "$bin_dir/cluster-ipam" <"$work/$letter.json")
    block=$(echo "$first" | python3 -c 'import ipaddress,json,sys; print(ipaddress.ip_interface(json.load(sys.stdin)["ips"][0]["address"]).network)')
    echo "== $node ($ns, 10.250.77.$index): claimed $block"

    result=$(ip netns exec "$ns" env CNI_COMMAND=ADD CNI_CONTAINERID="demo-$letter" CNI_NETNS="/run/netns/$ctr" \
        CNI_IFNAME=eth0 CNI_PATH="$bin_dir" "$bin_dir/bridge" <"$work/$letter.json")
    container_ip[$letter]=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
    echo "   container $ctr: ${container_ip[$letter]}"
done

echo
echo "== the store"
"$bin_dir/cnictl" cluster show "${store[@]}"

for letter in a b c; do
    echo "== routes on node-$letter"
    "$bin_dir/cnictl" cluster routes --apply --node "node-$letter" --netns "/run/netns/${node_ns[$letter]}" "${store[@]}"
    ip -n "${node_ns[$letter]}" route show proto 201
done

echo
echo "== container on node-a pings the container on node-c (${container_ip[c]})"
ip netns exec "${container_ns[a]}" ping -c 3 -W 2 "${container_ip[c]}"
