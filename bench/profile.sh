#!/usr/bin/env bash
# Runs bridge + host-local ADD/DEL cycles in throw-away namespaces, under a wrapper of your choice,
# to profile one column the way bench/run.py measures it (see bench/PROFILE.md). As root.
#
#   bench/profile.sh [-d DIR] [-m iptables|nftables] [-n CYCLES] [-p PARALLEL] [-- WRAPPER...]
#
#   -d DIR       plugin directory (default bin/; /usr/lib/cni for the reference)
#   -m BACKEND   add ipMasq with that ipMasqBackend
#   -n CYCLES    ADD+DEL cycles (default 20)
#   -p PARALLEL  containers per cycle, ADDed together then DELed together (default 1)
#   WRAPPER      command prefixed to every plugin run, e.g.
#                  -- strace -f -c -o /tmp/add.strace    (one file per run: add -ff)
#                  -- perf stat -x, -e task-clock
#   or wrap the whole script: perf record -g -o /tmp/cni.data -- bench/profile.sh -n 50
set -euo pipefail
dir=$(cd "$(dirname "$0")/.." && pwd)/bin masq="" cycles=20 parallel=1
while getopts "d:m:n:p:" opt; do
    case $opt in d) dir=$OPTARG ;; m) masq=$OPTARG ;; n) cycles=$OPTARG ;; p) parallel=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
wrapper=("$@")
tag=cniprof-$$ state=/var/tmp/cniprof-$$
host=$tag-h
cleanup() {
    for i in $(seq "$parallel"); do ip netns del "$tag-c$i" 2>/dev/null || true; done
    ip netns del "$host" 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT INT TERM
ip netns add "$host"
ip -n "$host" link set lo up
for i in $(seq "$parallel"); do ip netns add "$tag-c$i"; done
config="{\"cniVersion\":\"1.0.0\",\"name\":\"cniprof\",\"type\":\"bridge\",\"bridge\":\"cniprof$$\",\"isGateway\":true"
[ -n "$masq" ] && config+=",\"ipMasq\":true,\"ipMasqBackend\":\"$masq\""
config+=",\"ipam\":{\"type\":\"host-local\",\"ranges\":[[{\"subnet\":\"10.231.0.0/16\"}]],\"routes\":[{\"dst\":\"0.0.0.0/0\"}],\"dataDir\":\"$state\"}}"
run() { # command container-index cycle
    CNI_COMMAND=$1 CNI_CONTAINERID=prof-$3-$2 CNI_NETNS=/run/netns/$tag-c$2 CNI_IFNAME=eth0 CNI_PATH=$dir \
        ip netns exec "$host" "${wrapper[@]}" "$dir/bridge" <<<"$config" >/dev/null
}
start=$(date +%s%N)
for n in $(seq "$cycles"); do
    for i in $(seq "$parallel"); do run ADD "$i" "$n" & done
    wait
    for i in $(seq "$parallel"); do run DEL "$i" "$n" & done
    wait
done
echo "$cycles cycles x $parallel containers (ADD then DEL) in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
