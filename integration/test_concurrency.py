"""Concurrency: many runtimes' calls at once on one network (the IPAM store is the shared state).

- 64 bridge ADDs on one network, 16 at a time: all succeed, no address is handed out twice,
  every lease names its container, every container has its address.
- 20 ADDs at once on a range of 10 free addresses: exactly 10 succeed, the other 10 fail with
  code 102 (no address available), and a failed ADD leaves no veth behind.
- 64 DELs at once release everything: no lease, veth or rule remains.
- ADD, DEL and GC interleaved (ADD/DEL concurrently, GC between rounds, as the spec lets a runtime
  do), with containers "forgotten" without DEL: after each GC the store holds exactly the live
  attachments, and CHECK passes for each of them.

SWCNI_STRESS=1 (make stress) repeats the interleaved rounds many more times.
"""

import json
import os
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cnitest import BIN_DIR
from snapshot import IsolatedHost, differences, leases, leftovers, snapshot

STRESS = os.environ.get("SWCNI_STRESS") == "1"
NETWORK = "concnet"
BRIDGE = BIN_DIR / "bridge"


def config_for(host, ranges, version="1.1.0"):
    return {"cniVersion": version, "name": NETWORK, "type": "bridge", "bridge": host.bridge, "isGateway": True,
            "ipMasq": True, "ipam": {"type": "host-local", "dataDir": str(host.data_dir), "ranges": ranges}}


def add(host, config, container_id, container, barrier=None):
    env = host.environment("ADD", container_id, container, bin_dir=BIN_DIR)
    if barrier:
        barrier.wait()
    return host.run(BRIDGE, env, json.dumps(config).encode())


def delete(host, config, container_id, container, prev_result=None):
    env = host.environment("DEL", container_id, container, bin_dir=BIN_DIR)
    stdin = dict(config, prevResult=prev_result) if prev_result else config
    return host.run(BRIDGE, env, json.dumps(stdin).encode())


def host_veths(host):
    links = json.loads(os.popen(f"ip -n {host.name} -j -d link show type veth").read() or "[]")
    return [link["ifname"] for link in links]


def lease_owners(host):
    return {path.name: content for path, content in leases(host.data_dir, NETWORK)}


def warm_up(host, config):
    """One ADD+DEL so the bridge, its address and the firewall tables exist; returns the baseline."""
    container = host.container()
    proc = add(host, config, "warmup", container)
    assert proc.returncode == 0, proc.stdout
    assert delete(host, config, "warmup", container).returncode == 0
    host.remove_container(container)
    return snapshot(namespaces=[host.name])


@pytest.fixture
def host():
    world = IsolatedHost("swcni-conc")
    yield world
    world.close()


def test_64_parallel_adds_then_64_parallel_dels(host):
    config = config_for(host, [[{"subnet": "10.80.0.0/24"}], [{"subnet": "fd00:80::/64"}]])
    baseline = warm_up(host, config)
    containers = [(f"par{i}", host.container()) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        runs = list(pool.map(lambda c: add(host, config, *c), containers))
    failures = [(cid, r.stdout[:300]) for (cid, _), r in zip(containers, runs) if r.returncode != 0]
    assert not failures, f"{len(failures)} ADDs failed: {failures[:5]}"
    results = [json.loads(r.stdout) for r in runs]
    addresses = [ip["address"].split("/")[0] for result in results for ip in result["ips"]]
    assert len(addresses) == 128
    duplicates = {a for a in addresses if addresses.count(a) > 1}
    assert not duplicates, f"addresses handed out twice: {duplicates}"
    owners = lease_owners(host)
    assert len(owners) == 128, f"{len(owners)} leases for 64 dual-stack containers"
    for (cid, _), result in zip(containers, results):
        for ip in result["ips"]:
            assert owners[ip["address"].split("/")[0]] == f"{cid}\r\neth0"
    assert len(host_veths(host)) == 64

    with ThreadPoolExecutor(16) as pool:
        dels = list(pool.map(lambda c: delete(host, config, *c), containers))
    failures = [(cid, r.stdout[:300]) for (cid, _), r in zip(containers, dels) if r.returncode != 0]
    assert not failures, f"{len(failures)} DELs failed: {failures[:5]}"
    assert lease_owners(host) == {}
    assert host_veths(host) == []
    for _, container in containers:
        assert not leftovers(host.name, container), container
    assert not differences(baseline, snapshot(namespaces=[host.name]))


def test_20_parallel_adds_on_10_free_addresses(host):
    config = config_for(host, [[{"subnet": "10.81.0.0/24", "rangeStart": "10.81.0.10", "rangeEnd": "10.81.0.19"}]])
    baseline = warm_up(host, config)
    containers = [(f"race{i}", host.container()) for i in range(20)]
    barrier = threading.Barrier(20)
    with ThreadPoolExecutor(20) as pool:
        runs = list(pool.map(lambda c: add(host, config, *c, barrier=barrier), containers))
    succeeded = [cid for (cid, _), r in zip(containers, runs) if r.returncode == 0]
    failed = [(cid, ns, r) for (cid, ns), r in zip(containers, runs) if r.returncode != 0]
    codes = [json.loads(r.stdout).get("code") if r.stdout.strip() else None for _, _, r in failed]
    assert len(succeeded) == 10, f"{len(succeeded)} succeeded: {[r.stdout[:200] for _, _, r in failed][:3]}"
    assert codes == [102] * 10, f"failure codes {codes}: {[r.stdout[:300] for _, _, r in failed][:3]}"
    for _, _, r in failed:
        assert json.loads(r.stdout).get("cniVersion"), r.stdout
    assert len(host_veths(host)) == 10, f"orphan veths: {host_veths(host)}"
    for cid, container, _ in failed:
        assert not leftovers(host.name, container, container_id=cid, data_dir=host.data_dir, network=NETWORK,
                             keep_links=host_veths(host)), cid
    assert sorted(lease_owners(host)) == sorted(f"10.81.0.{i}" for i in range(10, 20))

    # DEL of every container, the failed ones included, succeeds and releases everything.
    with ThreadPoolExecutor(20) as pool:
        dels = list(pool.map(lambda c: delete(host, config, *c), containers))
    assert all(r.returncode == 0 for r in dels), [r.stdout[:300] for r in dels if r.returncode]
    assert lease_owners(host) == {} and host_veths(host) == []
    assert not differences(baseline, snapshot(namespaces=[host.name]))


def gc(host, config, attached):
    valid = [{"containerID": cid, "ifname": "eth0"} for cid in sorted(attached)]
    env = host.environment("GC", bin_dir=BIN_DIR)
    return host.run(BRIDGE, env, json.dumps(dict(config, **{"cni.dev/valid-attachments": valid})).encode())


def check(host, config, cid, container, result):
    env = host.environment("CHECK", cid, container, bin_dir=BIN_DIR)
    return host.run(BRIDGE, env, json.dumps(dict(config, prevResult=result)).encode())


def test_add_del_gc_interleaved_converge(host):
    config = config_for(host, [[{"subnet": "10.82.0.0/26"}]])
    baseline = warm_up(host, config)
    rng = random.Random(7)
    pool_size = 24
    attached = {}  # cid -> (container, result)
    serial = 0
    rounds = 30 if STRESS else 6
    for round_number in range(rounds):
        # Forget a few attachments as a crashed runtime would: the namespace goes, no DEL comes.
        for cid in rng.sample(sorted(attached), k=min(2, len(attached))):
            container, _ = attached.pop(cid)
            host.remove_container(container)
        to_delete = rng.sample(sorted(attached), k=len(attached) // 2)
        to_add = []
        while len(attached) - len(to_delete) + len(to_add) < pool_size:
            serial += 1
            to_add.append((f"mix{serial}", host.container()))
        jobs = [("DEL", cid, attached[cid][0]) for cid in to_delete] + [("ADD", cid, ns) for cid, ns in to_add]
        rng.shuffle(jobs)

        def run(job):
            verb, cid, container = job
            return job, (add if verb == "ADD" else delete)(host, config, cid, container)

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(run, jobs))
        for (verb, cid, container), proc in outcomes:
            assert proc.returncode == 0, f"round {round_number}: {verb} {cid}: {proc.stdout[:300]!r}"
            if verb == "ADD":
                attached[cid] = (container, json.loads(proc.stdout))
            else:
                attached.pop(cid)
                host.remove_container(container)

        proc = gc(host, config, attached)
        assert proc.returncode == 0, f"round {round_number}: GC: {proc.stdout[:300]!r}"
        owners = lease_owners(host)
        expected = {ip["address"].split("/")[0]: f"{cid}\r\neth0"
                    for cid, (_, result) in attached.items() for ip in result["ips"]}
        assert owners == expected, f"round {round_number}: store {owners} != attachments {expected}"
        for cid, (container, result) in attached.items():
            proc = check(host, config, cid, container, result)
            assert proc.returncode == 0, f"round {round_number}: CHECK {cid}: {proc.stdout[:300]!r}"
        state = snapshot(namespaces=[host.name])["netns"][host.name]
        rules = "\n".join(state["iptables"] + state["nftables"])
        forgotten = [f"mix{n}" for n in range(1, serial + 1) if f"mix{n}" not in attached]
        stale = [cid for cid in forgotten if re.search(rf"\b{cid}\b", rules)]
        assert not stale, f"round {round_number}: rules of gone attachments survive GC: {stale}"

    with ThreadPoolExecutor(16) as pool:
        dels = list(pool.map(lambda item: delete(host, config, item[0], item[1][0]), attached.items()))
    assert all(r.returncode == 0 for r in dels)
    for container, _ in attached.values():
        host.remove_container(container)
    assert lease_owners(host) == {}
    # Forgotten attachments' host veths vanished with their namespaces; GC released their leases
    # and rules: the host is as before.
    assert not differences(baseline, snapshot(namespaces=[host.name]))
