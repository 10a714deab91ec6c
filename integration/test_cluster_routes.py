"""Three "nodes" (network namespaces) on one shared L2 segment reach each other's containers
through `cnictl cluster routes --apply` alone (flannel host-gw style).

Layout: a segment namespace holds a bridge; each node namespace has an eth0 veth onto it
(10.250.77.N/24) and its own container bridge made by our bridge plugin, with a container whose
address cluster-ipam gives from the node's block of the cluster pool (10.251.0.0/24, /26 blocks).
etcd runs in the host namespace on loopback: every store call (the node's first claim, and
`routes --apply --netns <node>`, which opens only its netlink socket inside the node's namespace)
runs there; the container's own ADD inside the node needs no store, its block having room.
"""

import ipaddress
import json
import subprocess

from cnitest import BIN_DIR, run_plugin, sh, unique
from etcd import etcd  # noqa: F401 (fixture)

CNICTL = str(BIN_DIR / "cnictl")
POOL = "10.251.0.0/24"


def cnictl(*argv, input=None):
    run = subprocess.run([CNICTL, "cluster", *argv], capture_output=True, text=True, timeout=20, input=input)
    assert run.returncode == 0, f"cnictl cluster {argv}: {run.stdout} {run.stderr}"
    return run.stdout


def routes(ns):
    out = sh("ip", "-n", ns.name, "-j", "route", "show", "proto", "201")
    return sorted((r["dst"], r.get("gateway")) for r in json.loads(out or "[]"))


def test_three_nodes_reach_each_others_containers(etcd, netns_factory, tmp_path):
    prefix = f"/swcni-routes-{unique('', 8)}/"
    store = ["--endpoints", ",".join(etcd.endpoints), "--prefix", prefix]
    segment = netns_factory("swseg")
    segment.run("ip", "link", "add", "lan0", "type", "bridge")
    segment.run("ip", "link", "set", "lan0", "up")

    nodes = []
    for index, letter in enumerate("abc", start=1):
        ns = netns_factory(f"swn{letter}")
        peer = unique("vsg", 12)
        sh("ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer", "name", peer, "netns", segment.name)
        segment.run("ip", "link", "set", peer, "master", "lan0", "up")
        node_ip = f"10.250.77.{index}"
        ns.run("ip", "addr", "add", node_ip + "/24", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        name = unique(f"node-{letter}-", 16)
        ipam = {"type": "cluster-ipam", "etcd": {"endpoints": etcd.endpoints, "prefix": prefix}, "node": name,
                "nodeIPs": [node_ip], "pools": [{"subnet": POOL, "blockSize": 26}],
                "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(tmp_path / letter)}
        network = unique("net", 12)
        # The node's first ADD claims its block; it runs in the host namespace, where etcd
        # listens. The container's ADD below runs inside the node and needs no store at all:
        # the held block has room (a steady ADD makes no store round trip).
        first = run_plugin("cluster-ipam", "ADD", {"cniVersion": "1.0.0", "name": network, "ipam": ipam},
                           containerid="node-reserve", netns="/var/run/netns/unused")
        assert first.ok, str(first)
        block = str(ipaddress.ip_interface(first.json["ips"][0]["address"]).network)
        container = netns_factory(f"swc{letter}")
        config = {"cniVersion": "1.0.0", "name": network, "type": "bridge", "bridge": "cbr0", "isGateway": True,
                  "ipam": ipam}
        run = run_plugin("bridge", "ADD", config, netns=container.path, wrapper=("ip", "netns", "exec", ns.name))
        assert run.ok, str(run)
        address = run.json["ips"][0]["address"].split("/")[0]
        nodes.append({"ns": ns, "name": name, "ip": node_ip, "block": block, "container": container,
                      "address": address})

    for node in nodes:
        out = cnictl("routes", "--apply", "--node", node["name"], "--netns", node["ns"].path, *store)
        assert out.count("added ") == 2, out
    for node in nodes:
        expected = sorted((other["block"], other["ip"]) for other in nodes if other is not node)
        assert routes(node["ns"]) == expected

    a, b, c = nodes
    ping = a["container"].run("ping", "-c", "2", "-W", "2", c["address"], check=False)
    assert " 0% packet loss" in ping, ping
    assert " 0% packet loss" in c["container"].run("ping", "-c", "1", "-W", "2", b["address"], check=False)

    # Stale routes of ours go: a block released by B, and a proto-201 route nobody wants.
    a["ns"].run("ip", "route", "add", "10.251.1.0/26", "via", c["ip"], "proto", "201")
    a["ns"].run("ip", "route", "add", "10.252.0.0/26", "via", c["ip"])  # not ours: kept
    release = cnictl("release", "--node", b["name"], b["block"], *store)
    assert f"released {b['block']}" in release
    out = cnictl("routes", "--apply", "--node", a["name"], "--netns", a["ns"].path, *store)
    assert "removed 10.251.1.0/26" in out and f"removed {b['block']}" in out, out
    assert routes(a["ns"]) == [(c["block"], c["ip"])]
    assert "10.252.0.0/26" in a["ns"].run("ip", "route", "show", "10.252.0.0/26")
    # Applying again changes nothing.
    out = cnictl("routes", "--apply", "--node", a["name"], "--netns", a["ns"].path, *store)
    assert "added" not in out and "removed" not in out and "kept" in out, out
