"""cluster-ipam, the plugin: leases inside the node's blocks, blocks claimed from a private etcd
(integration/etcd.py; in-process over plain HTTP, through cnictl for TLS), exactly as a runtime
execs an IPAM plugin.

Every uniqueness claim is checked on what is on disk (the lease files of every simulated
node) and in etcd (read over its own gateway), not on what the plugin answered. Bounded for
`make test`; SWCNI_STRESS=1 runs the issue's full counts (10 nodes x 1,000 ADDs).
"""

import ipaddress
import json
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cnitest import BIN_DIR, run_plugin, unique
from etcd import answer_losing_proxy, etcd, etcd_cluster, etcd_tls, is_claim_txn  # noqa: F401 (fixtures)
from test_cluster_store import blocks_in_store

STRESS = os.environ.get("SWCNI_STRESS") == "1"
PLUGIN = "cluster-ipam"


@pytest.fixture
def prefix():
    return f"/swcni-ipam-{unique('', 8)}/"


@pytest.fixture
def data_root(tmp_path):
    return tmp_path


def config(cluster, prefix, data_dir, node, *, pools=None, network="clnet", **ipam):
    section = {
        "type": PLUGIN, "etcd": {"endpoints": cluster.endpoints, "prefix": prefix}, "node": node,
        "nodeIPs": ["10.0.0.1"], "dataDir": str(data_dir),
        "pools": pools or [{"subnet": "10.42.0.0/24", "blockSize": 28}],
    }
    section.update(ipam)
    return {"cniVersion": "1.1.0", "name": network, "type": "bridge", "ipam": section}


def leases(data_dir, network="clnet"):
    """{address: container id} from the lease files, read independently."""
    directory = Path(data_dir) / network
    found = {}
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        try:
            address = ipaddress.ip_address(entry.name)
        except ValueError:
            continue
        found[str(address)] = entry.read_bytes().decode().splitlines()[0]
    return found


def state(data_dir, network="clnet"):
    path = Path(data_dir) / network / "cluster-blocks.json"
    return json.loads(path.read_text()) if path.exists() else None


NETNS = "/var/run/netns/ipam-test-unused"  # an IPAM plugin never enters it; the skel needs it set


def cni(command, conf, **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin(PLUGIN, command, conf, **kw)


def add(conf, cid, **kw):
    return cni("ADD", conf, containerid=cid, **kw)


def test_add_check_del_gc_in_one_block(etcd, prefix, data_root):
    conf = config(etcd, prefix, data_root, "node-a", releaseGrace=0)
    run = add(conf, "c1")
    assert run.ok, run
    ip = run.json["ips"][0]
    block = state(data_root)["blocks"][0]["cidr"]
    assert ipaddress.ip_interface(ip["address"]).ip in ipaddress.ip_network(block)
    assert ip["address"].endswith("/28")
    assert ip["gateway"] == str(ipaddress.ip_network(block)[1]), "the block's first address is its gateway"
    assert blocks_in_store(etcd.endpoints, prefix) == {block: "node-a"}
    assert leases(data_root) == {ip["address"].split("/")[0]: "c1"}

    assert cni("CHECK", conf, containerid="c1").ok
    # The same interface again: refused, as host-local refuses it.
    again = add(conf, "c1")
    assert again.error_code() == 102 and "duplicate" in again.json["msg"], again

    assert cni("DEL", conf, containerid="c1").ok
    assert leases(data_root) == {}
    assert state(data_root)["blocks"][0]["emptySince"] is not None, "an emptied block is marked"
    assert cni("DEL", conf, containerid="c1").ok, "DEL is idempotent"
    check = cni("CHECK", conf, containerid="c1")
    assert check.error_code() == 105, check

    # GC twice with grace 0: the node's last block of the pool is never given back.
    gc = dict(conf, **{"cni.dev/valid-attachments": []})
    assert cni("GC", gc).ok
    assert cni("GC", gc).ok
    assert blocks_in_store(etcd.endpoints, prefix) == {block: "node-a"}


def test_full_block_claims_the_next_and_gc_releases_the_empty_one(etcd, prefix, data_root):
    conf = config(etcd, prefix, data_root, "node-a", releaseGrace=0, highWater=1)
    got = [add(conf, f"c{i}") for i in range(14)]  # a /28 block holds 13 addresses
    assert all(r.ok for r in got), [str(r) for r in got if not r.ok]
    held = sorted(b["cidr"] for b in state(data_root)["blocks"])
    assert len(held) == 2 and set(blocks_in_store(etcd.endpoints, prefix)) == set(held)
    assert len(set(leases(data_root))) == 14
    # Empty the second block, then GC twice (grace 0): it goes back; the first stays.
    second = ipaddress.ip_network(held[1])
    for i, run in enumerate(got):
        if ipaddress.ip_interface(run.json["ips"][0]["address"]).ip in second:
            assert cni("DEL", conf, containerid=f"c{i}").ok
    valid = [{"containerID": f"c{i}", "ifname": "eth0"} for i in range(14)]
    gc = dict(conf, **{"cni.dev/valid-attachments": valid})
    assert cni("GC", gc).ok
    assert cni("GC", gc).ok
    assert set(blocks_in_store(etcd.endpoints, prefix)) == {held[0]}
    assert [b["cidr"] for b in state(data_root)["blocks"]] == [held[0]]
    # GC of leases: valid-attachments without c0 releases c0's lease.
    gc = dict(conf, **{"cni.dev/valid-attachments": valid[1:]})
    assert cni("GC", gc).ok
    assert "c0" not in leases(data_root).values()


def test_ten_nodes_in_parallel_never_share_an_address(etcd, prefix, tmp_path):
    # 16 blocks of 13 addresses = 208; 10 nodes ask for more than that.
    per_node = 100 if STRESS else 25
    nodes = [f"node-{n}" for n in range(10)]
    pool = [{"subnet": "10.42.0.0/24", "blockSize": 28}]
    if STRESS:
        pool = [{"subnet": "10.40.0.0/19", "blockSize": 26}]  # 7,808 addresses for 10,000 ADDs
        per_node = 1000

    def one(job):
        node, i = job
        conf = config(etcd, prefix, tmp_path / node, node, pools=pool)
        return node, add(conf, f"{node}-c{i}")

    jobs = [(node, i) for i in range(per_node) for node in nodes]
    with ThreadPoolExecutor(max_workers=12) as pool_executor:
        results = list(pool_executor.map(one, jobs))
    failures = [r for _, r in results if not r.ok]
    assert all(r.error_code() == 102 for r in failures), [str(r) for r in failures if r.error_code() != 102][:3]
    if not STRESS:
        assert failures, "the pool is smaller than the demand: some ADDs must be refused"
    owners = blocks_in_store(etcd.endpoints, prefix)
    seen = {}
    for node in nodes:
        for address, cid in leases(tmp_path / node).items():
            assert address not in seen, f"{address} leased by {seen[address]} and {node}"
            seen[address] = node
            block = next((b for b in owners if ipaddress.ip_address(address) in ipaddress.ip_network(b)), None)
            assert block is not None and owners[block] == node, f"{address} of {node} is in {block} of {owners.get(block)}"
    assert len(seen) == sum(1 for _, r in results if r.ok)
    print(f"cluster-ipam: {len(jobs)} ADDs on 10 nodes, {len(seen)} addresses, 0 duplicates, "
          f"{len(failures)} refused with 102, {len(owners)} blocks")


def test_sixty_four_parallel_adds_make_exactly_one_claim(etcd, prefix, data_root):
    conf = config(etcd, prefix, data_root, "node-a", pools=[{"subnet": "10.42.0.0/22", "blockSize": 25}],
                  highWater=1)
    with ThreadPoolExecutor(max_workers=64) as executor:
        results = list(executor.map(lambda i: add(conf, f"p{i}"), range(64)))
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok][:3]
    assert len(blocks_in_store(etcd.endpoints, prefix)) == 1
    assert len(leases(data_root)) == 64


def test_store_down_adds_use_held_room_then_fail_with_11(etcd, prefix, data_root):
    conf = config(etcd, prefix, data_root, "node-a", highWater=1)
    assert add(conf, "first").ok
    etcd.stop()
    for i in range(12):  # the rest of the /28 block
        run = add(conf, f"down{i}")
        assert run.ok, run
    started = time.monotonic()
    run = add(conf, "one-too-many")
    elapsed = time.monotonic() - started
    assert run.error_code() == 11, run
    assert elapsed < 5, f"a bounded failure ({elapsed:.1f}s), not a hang"
    assert "one-too-many" not in leases(data_root).values()
    # DEL needs no store.
    assert cni("DEL", conf, containerid="down0").ok
    # STATUS: room again (the DEL freed one), so ready even with the store down.
    assert cni("STATUS", conf).ok
    assert add(conf, "down0-again").ok
    status = cni("STATUS", conf)
    assert status.error_code() == 50 and "store" in status.json["msg"], status


def test_requested_ip_in_another_nodes_block_is_refused_naming_it(etcd, prefix, tmp_path):
    a = config(etcd, prefix, tmp_path / "a", "node-a")
    b = config(etcd, prefix, tmp_path / "b", "node-b")
    run = add(a, "ca")
    assert run.ok, run
    theirs = ipaddress.ip_interface(run.json["ips"][0]["address"])
    wanted = str(theirs.ip + 1)
    refused = add(b, "cb", args=f"IP={wanted}")
    assert refused.error_code() == 102 and "node-a" in refused.json["msg"], refused
    assert leases(tmp_path / "b") == {}
    # A free block: node-b claims exactly that block for its requested address.
    free = "10.42.0.200"
    got = add(b, "cb2", args=f"IP={free}")
    assert got.ok and got.json["ips"][0]["address"] == free + "/28", got
    assert blocks_in_store(etcd.endpoints, prefix)["10.42.0.192/28"] == "node-b"


def test_dual_stack_allocates_both_or_neither(etcd, prefix, data_root):
    pools = [{"subnet": "10.42.0.0/24", "blockSize": 26}, {"subnet": "fd00:42::/126", "blockSize": 126}]
    conf = config(etcd, prefix, data_root, "node-a", pools=pools, highWater=1)
    first = add(conf, "d1")
    assert first.ok, first
    families = sorted(ipaddress.ip_interface(ip["address"]).version for ip in first.json["ips"])
    assert families == [4, 6]
    # The IPv6 pool is one /126 block with 3 usable addresses, the gateway among them: 2 left,
    # one taken. The next takes the last; the one after must fail without keeping its IPv4.
    assert add(conf, "d2").ok
    third = add(conf, "d3")
    assert third.error_code() == 102, third
    assert "d3" not in leases(data_root).values()
    # Choosing only IPv4 still works.
    only4 = add(conf, "d4", args="IPFAMILY=ipv4")
    assert only4.ok and [ipaddress.ip_interface(i["address"]).version for i in only4.json["ips"]] == [4]


def test_leader_killed_during_adds_no_failure(etcd_cluster, prefix, data_root):
    conf = config(etcd_cluster, prefix, data_root, "node-a", pools=[{"subnet": "10.42.0.0/22", "blockSize": 29}],
                  highWater=1)
    count = 300 if STRESS else 60
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            time.sleep(0.5)
            leader = etcd_cluster.leader()
            if leader is None:
                continue
            leader.kill(signal.SIGKILL)
            time.sleep(1.0)
            leader.restart()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        results = [add(conf, f"k{i}") for i in range(count)]
    finally:
        stop.set()
        thread.join()
    failures = [str(r) for r in results if not r.ok]
    assert failures == [], failures[:3]
    assert len(set(leases(data_root))) == count
    held = {b["cidr"] for b in state(data_root)["blocks"]}
    assert {b for b, n in blocks_in_store(etcd_cluster.endpoints, prefix).items() if n == "node-a"} == held


def test_kill_9_mid_add_leaks_no_lease_or_block(etcd, prefix, data_root):
    conf = config(etcd, prefix, data_root, "node-a", pools=[{"subnet": "10.42.0.0/22", "blockSize": 29}],
                  highWater=1)
    env = {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_NETNS": NETNS, "CNI_PATH": str(BIN_DIR), "PATH": "/usr/bin:/bin"}
    rounds = 200 if STRESS else 30
    for i in range(rounds):
        proc = subprocess.Popen([str(BIN_DIR / PLUGIN)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(env, CNI_CONTAINERID=f"k{i}"))
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        time.sleep(random.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # A killed plugin's cnictl may still be finishing its claim: let it end (bounded).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", "cnictl cluster claim"],
                                                          capture_output=True).returncode == 0:
        time.sleep(0.1)
    # The runtime DELs what it started; then nothing is left leased.
    for i in range(rounds):
        assert cni("DEL", conf, containerid=f"k{i}").ok
    assert leases(data_root) == {}
    # GC adopts any block whose claim reply was lost, and (grace 0, seen empty twice) gives back
    # every empty block but the pool's last: store and local record agree, nothing leaked.
    gc = dict(conf, **{"cni.dev/valid-attachments": []})
    gc["ipam"] = dict(conf["ipam"], releaseGrace=0)
    assert cni("GC", gc).ok and cni("GC", gc).ok
    mine = {b for b, n in blocks_in_store(etcd.endpoints, prefix).items() if n == "node-a"}
    assert mine == {b["cidr"] for b in state(data_root)["blocks"]}
    assert len(mine) <= 1, f"empty blocks left held after GC: {sorted(mine)}"


@pytest.mark.parametrize("ipam, key", [
    ({"etcd": None}, "ipam.etcd"),
    ({"etcd": {"endpoints": []}}, "ipam.etcd.endpoints"),
    ({"etcd": {"endpoints": ["127.0.0.1:2379"]}}, "ipam.etcd.endpoints[0]"),
    ({"pools": []}, "ipam.pools"),
    ({"pools": [{"subnet": "10.42.0.1/24"}]}, "ipam.pools[0].subnet"),
    ({"pools": [{"subnet": "10.42.0.0/24", "blockSize": 16}]}, "ipam.pools[0].blockSize"),
    ({"reclaimAfter": 10, "leaseTTL": 60}, "ipam.reclaimAfter"),
    ({"highWater": 1.5}, "ipam.highWater"),
    ({"dataDir": "relative"}, "ipam.dataDir"),
])
def test_bad_config_is_code_7_naming_the_key_and_touches_nothing(prefix, data_root, ipam, key):
    class NoStore:
        endpoints = ["http://127.0.0.1:9"]
    conf = config(NoStore, prefix, data_root, "node-a")
    for name, value in ipam.items():
        if value is None:
            conf["ipam"].pop(name)
        else:
            conf["ipam"][name] = value
    run = add(conf, "bad")
    assert run.error_code() == 7 and key in run.json["msg"], run
    assert not (data_root / "clnet").exists()


def test_conf_example_bridge_chain_in_a_namespace(etcd, prefix, data_root, netns):
    """conf-examples/cluster-ipam-bridge.conflist's bridge, with its IPAM exec'd as a runtime's
    bridge does, into a namespace of the test's own: the container gets the block's address and
    gateway, and DEL leaves no lease."""
    conflist = json.loads((Path(__file__).resolve().parent.parent / "conf-examples"
                           / "cluster-ipam-bridge.conflist").read_text())
    bridge = dict(conflist["plugins"][0], cniVersion=conflist["cniVersion"], name=conflist["name"])
    bridge["bridge"] = unique("cbr", 12)
    bridge["ipMasq"] = False  # no host NAT rule for a test
    bridge["ipam"] = dict(bridge["ipam"], etcd={"endpoints": etcd.endpoints, "prefix": prefix}, dataDir=str(data_root),
                          node="node-ns")
    try:
        run = run_plugin("bridge", "ADD", bridge, containerid="ns1", netns=netns.path)
        assert run.ok, run
        ip = ipaddress.ip_interface(run.json["ips"][0]["address"])
        assert ip in ipaddress.ip_network("10.42.0.0/16") and ip.network.prefixlen == 26
        shown = json.loads(netns.run("ip", "-j", "addr", "show", "eth0"))
        assert str(ip.ip) in [a["local"] for a in shown[0]["addr_info"]]
        assert list(blocks_in_store(etcd.endpoints, prefix).values()) == ["node-ns"]
        assert run_plugin("bridge", "DEL", bridge, containerid="ns1", netns=netns.path).ok
        assert leases(data_root, conflist["name"]) == {}
    finally:
        subprocess.run(["ip", "link", "del", bridge["bridge"]], capture_output=True)


def test_plain_http_claims_in_process_and_tls_goes_through_cnictl(etcd, etcd_tls, prefix, tmp_path):
    # CNI_PATH without cnictl: a plain-HTTP store is reached by the plugin itself...
    empty_path = tmp_path / "no-cnictl"
    empty_path.mkdir()
    conf = config(etcd, prefix, tmp_path / "plain", "node-plain")
    result = add(conf, "plain1", path=str(empty_path))
    assert result.rc == 0, result.stdout
    claimed = blocks_in_store(etcd.endpoints, prefix)
    assert list(claimed.values()) == ["node-plain"], claimed
    assert ipaddress.ip_address(result.json["ips"][0]["address"].split("/")[0]) in ipaddress.ip_network(
        next(iter(claimed)))
    # ...and so is localhost, by name.
    local = config(etcd, prefix, tmp_path / "local", "node-local")
    local["ipam"]["etcd"]["endpoints"] = [e.replace("127.0.0.1", "localhost") for e in etcd.endpoints]
    assert add(local, "local1", path=str(empty_path)).rc == 0
    assert sorted(blocks_in_store(etcd.endpoints, prefix).values()) == ["node-local", "node-plain"]
    # A TLS store needs cnictl (libcurl): without it, a clear error and no lease...
    tls = etcd_tls.tls
    secure = config(etcd_tls, prefix, tmp_path / "tls", "node-tls")
    secure["ipam"]["etcd"].update(caFile=tls["ca"], certFile=tls["client_cert"], keyFile=tls["client_key"])
    refused = add(secure, "tls1", path=str(empty_path))
    assert refused.rc != 0 and "cnictl" in refused.json["msg"] and "CNI_PATH" in refused.json["msg"], refused.stdout
    assert leases(tmp_path / "tls") == {}
    # ...with it, the claim goes through.
    through = add(secure, "tls1")
    assert through.rc == 0, through.stdout
    held = [ipaddress.ip_network(b["cidr"]) for b in state(tmp_path / "tls")["blocks"]]
    assert len(held) == 1 and ipaddress.ip_address(through.json["ips"][0]["address"].split("/")[0]) in held[0]


def test_a_lost_answer_in_process_is_resent_and_takes_one_block(etcd, prefix, tmp_path):
    # The plugin's own HTTP client behind a proxy that applies the claim's txn and then closes
    # the connection without answering: the kept connection is reopened and the txn resent,
    # which must find the block already taken instead of taking a second one.
    conf = config(etcd, prefix, tmp_path, "node-lossy")
    with answer_losing_proxy(etcd.endpoints[0], is_claim_txn) as (proxy, dropped):
        conf["ipam"]["etcd"]["endpoints"] = [proxy]
        result = add(conf, "lossy1", path=str(tmp_path))  # no cnictl there: in-process only
    assert dropped, "the proxy never saw the claim's txn"
    assert result.rc == 0, result.stdout
    assert list(blocks_in_store(etcd.endpoints, prefix).values()) == ["node-lossy"]
    assert len(state(tmp_path)["blocks"]) == 1
