"""cluster-ipam's store side: `cnictl cluster claim|release|renew --json` (the plugin's exec
protocol), gc and release-node, against a private etcd (integration/etcd.py).

The store is read back independently of cnictl, over etcd's own JSON gateway, so "every block
has exactly one owner" is checked on what etcd holds, not on what cnictl says.

Bounded for `make test` (about 30 s); SWCNI_STRESS=1 runs many more kill -9 rounds and leader kills.
"""

import base64
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from cnitest import BIN_DIR, unique
from etcd import answer_losing_proxy, etcd, etcd_cluster, etcd_tls, is_claim_txn  # noqa: F401 (fixtures)

CNICTL = BIN_DIR / "cnictl"
STRESS = os.environ.get("SWCNI_STRESS") == "1"


@pytest.fixture(autouse=True)
def built_cnictl():
    if not CNICTL.exists():
        pytest.fail(f"cnictl not built in {BIN_DIR} (run `make build`)")


def cnictl(verb, request, timeout=10):
    """One `cnictl cluster <verb> --json` exec: (exit status, reply, seconds taken)."""
    started = time.monotonic()
    run = subprocess.run(
        [str(CNICTL), "cluster", verb, "--json"], input=json.dumps(request).encode(), capture_output=True,
        timeout=timeout)
    elapsed = time.monotonic() - started
    try:
        reply = json.loads(run.stdout)
    except ValueError:
        raise AssertionError(f"cnictl {verb}: not JSON: {run.stdout!r} stderr={run.stderr!r}")
    return run.returncode, reply, elapsed


def cnictl_cli(*argv):
    return subprocess.run([str(CNICTL), "cluster", *argv], capture_output=True, text=True, timeout=20)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def store(endpoints, prefix):
    """Every key under `prefix` as etcd holds it: {key: (value, lease)}."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": b64(prefix), "range_end": b64(end)}).encode()
    for endpoint in endpoints:
        try:
            request = urllib.request.Request(endpoint + "/v3/kv/range", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=2) as reply:
                kvs = json.loads(reply.read()).get("kvs", [])
            return {
                base64.b64decode(kv["key"]).decode(): (json.loads(base64.b64decode(kv["value"])), kv.get("lease"))
                for kv in kvs
            }
        except OSError:
            continue
    raise AssertionError("no etcd endpoint answered")


def blocks_in_store(endpoints, prefix):
    """{block cidr: owner node}."""
    return {key[len(prefix + "blocks/"):]: value["node"]
            for key, (value, _) in store(endpoints, prefix + "blocks/").items()}


def request(endpoints, node, *, prefix, pool="10.42.0.0/22", block_size=26, ttl=60, node_ips=("10.0.0.1",), **extra):
    body = {
        "etcd": {"endpoints": endpoints, "prefix": prefix}, "node": node, "nodeIPs": list(node_ips),
        "leaseTTL": ttl, "pool": {"subnet": pool, "blockSize": block_size},
    }
    body.update(extra)
    return body


@pytest.fixture
def prefix():
    return f"/swcni-test-{unique('', 8)}/"


def test_claim_renew_release_through_the_json_protocol(etcd, prefix):
    req = request(etcd.endpoints, "node-a", prefix=prefix)
    rc, reply, _ = cnictl("claim", req)
    assert rc == 0, reply
    assert len(reply["claimed"]) == 1 and reply["held"] == reply["claimed"]
    block = reply["claimed"][0]
    assert block.startswith("10.42.") and block.endswith("/26")
    assert abs(reply["registeredAt"] - time.time()) < 30
    assert blocks_in_store(etcd.endpoints, prefix) == {block: "node-a"}
    record, _ = store(etcd.endpoints, prefix + "blocks/")[prefix + "blocks/" + block]
    assert record["pool"] == "10.42.0.0/22" and record["node"] == "node-a"
    node, lease = store(etcd.endpoints, prefix + "nodes/")[prefix + "nodes/node-a"]
    assert node["nodeIPs"] == ["10.0.0.1"] and lease, "the registration is on a lease"

    rc, second, _ = cnictl("claim", req)
    assert rc == 0 and second["claimed"][0] != block and sorted(second["held"]) == sorted([block] + second["claimed"])

    rc, renewed, _ = cnictl("renew", {k: v for k, v in req.items() if k != "pool"})
    assert rc == 0 and sorted(renewed["held"]) == sorted(second["held"])

    release = {k: v for k, v in req.items() if k != "pool"}
    release["blocks"] = [block, "10.99.0.0/26"]
    rc, released, _ = cnictl("release", release)
    assert rc == 0, released
    assert released == {"released": [block], "notOwned": ["10.99.0.0/26"]}
    # Again: gone is not an error, just not ours.
    rc, again, _ = cnictl("release", release)
    assert rc == 0 and again["released"] == [] and block in again["notOwned"]
    assert blocks_in_store(etcd.endpoints, prefix) == {second["claimed"][0]: "node-a"}

    # Another node cannot release it.
    other = dict(release, node="node-b", blocks=second["claimed"])
    rc, foreign, _ = cnictl("release", other)
    assert rc == 0 and foreign["released"] == [] and foreign["notOwned"] == second["claimed"]
    assert blocks_in_store(etcd.endpoints, prefix) == {second["claimed"][0]: "node-a"}


def run_parallel(count, work):
    results = [None] * count
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, work(i))) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_64_parallel_claims_for_one_node_never_share_a_block(etcd, prefix):
    req = request(etcd.endpoints, "node-a", prefix=prefix, pool="10.42.0.0/18")
    results = run_parallel(64, lambda i: cnictl("claim", req, timeout=20))
    failures = [(rc, reply) for rc, reply, _ in results if rc != 0]
    assert failures == []
    claimed = [reply["claimed"][0] for _, reply, _ in results]
    assert len(set(claimed)) == 64, "two claims got the same block"
    assert blocks_in_store(etcd.endpoints, prefix) == {block: "node-a" for block in claimed}


def test_ten_nodes_claim_until_the_pool_is_exhausted(etcd, prefix):
    # 16 blocks for 10 nodes: every node claims until it gets the clean code 102.
    pool = "10.44.0.0/22"

    def node_loop(i):
        got, errors = [], []
        for _ in range(20):
            rc, reply, _ = cnictl("claim", request(etcd.endpoints, f"node-{i}", prefix=prefix, pool=pool), timeout=20)
            if rc != 0:
                errors.append(reply)
                break
            got += reply["claimed"]
        return got, errors

    results = run_parallel(10, node_loop)
    owners = {}
    for i, (got, errors) in enumerate(results):
        assert len(errors) == 1, f"node-{i} never stopped or failed oddly: {errors}"
        error = errors[0]
        assert error["code"] == 102 and "exhausted" in error["msg"] and pool in error["msg"], error
        for block in got:
            assert block not in owners, f"{block} claimed by node-{i} and {owners[block]}"
            owners[block] = f"node-{i}"
    assert len(owners) == 16
    assert blocks_in_store(etcd.endpoints, prefix) == owners


def claims_while_the_leader_dies(cluster, prefix, pool, nodes=4, per_node=8):
    """`nodes` nodes claiming back to back; the leader SIGKILLed once each has claimed twice."""
    first_claims = threading.Semaphore(0)

    def node_loop(i):
        outcomes = []
        for n in range(per_node):
            outcomes.append(cnictl("claim", request(cluster.endpoints, f"node-{i}", prefix=prefix, pool=pool),
                                   timeout=20))
            if n == 1:
                first_claims.release()
        return outcomes

    result = {}
    worker = threading.Thread(target=lambda: result.update(r=run_parallel(nodes, node_loop)))
    worker.start()
    for _ in range(nodes):
        first_claims.acquire(timeout=30)
    leader = cluster.leader()
    assert leader is not None
    leader.kill(signal.SIGKILL)
    worker.join()
    return leader, [o for per_node in result["r"] for o in per_node]


def test_leader_killed_during_claims_fails_none(etcd_cluster, prefix):
    pool = "10.45.0.0/18"
    claimed = []
    rounds = 6 if STRESS else 2
    for round in range(rounds):
        killed, outcomes = claims_while_the_leader_dies(etcd_cluster, prefix, pool)
        failures = [(rc, reply) for rc, reply, _ in outcomes if rc != 0]
        assert failures == [], f"{len(failures)} of {len(outcomes)} claims failed with the leader killed"
        claimed += [reply["claimed"][0] for _, reply, _ in outcomes]
        # The killed member comes back (its data kept) before the next leader is killed.
        killed.restart()
        etcd_cluster.wait_healthy()
    assert len(set(claimed)) == len(claimed) == 32 * rounds
    assert set(blocks_in_store(etcd_cluster.endpoints, prefix)) == set(claimed)


def test_store_down_is_code_11_within_the_deadline(etcd, prefix):
    endpoints = etcd.endpoints
    etcd.members[0].kill()
    rc, reply, elapsed = cnictl("claim", request(endpoints, "node-a", prefix=prefix))
    assert rc != 0 and reply["code"] == 11, reply
    assert "unreachable" in reply["msg"]
    # The overall deadline (2 s) is a correctness property: the plugin kills cnictl at 3 s.
    assert elapsed < 5, f"cnictl took {elapsed:.1f}s with etcd down"
    # An endpoint that accepts connections and never answers (a hung member) is bounded too.
    import socket
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        rc, reply, elapsed = cnictl("renew", {"etcd": {"endpoints": [url]}, "node": "node-a"})
        assert rc != 0 and reply["code"] == 11, reply
        assert elapsed < 5
    finally:
        hung.close()


def test_kill_9_mid_claim_leaves_every_block_held_or_claimable(etcd, prefix):
    # 8 blocks; cnictl killed at random instants of a claim; afterwards the node's claims and
    # renew must account for all 8 (none lost in between).
    pool = "10.46.0.0/20" if STRESS else "10.46.0.0/23"
    req = request(etcd.endpoints, "node-a", prefix=prefix, pool=pool)
    rng = random.Random(16)
    for _ in range(200 if STRESS else 6):
        proc = subprocess.Popen([str(CNICTL), "cluster", "claim", "--json"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.stdin.write(json.dumps(req).encode())
        proc.stdin.close()
        time.sleep(rng.uniform(0.0, 0.04))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever was written is a whole record of ours.
        for block, owner in blocks_in_store(etcd.endpoints, prefix).items():
            assert owner == "node-a"
    rc, renewed, _ = cnictl("renew", {k: v for k, v in req.items() if k != "pool"})
    assert rc == 0
    held = set(renewed["held"])
    assert held == set(blocks_in_store(etcd.endpoints, prefix))
    while True:
        rc, reply, _ = cnictl("claim", req)
        if rc != 0:
            assert reply["code"] == 102, reply
            break
        assert not (set(reply["claimed"]) & held)
        held |= set(reply["claimed"])
        assert set(reply["held"]) == held, "a claim's reply must list every block the node holds"
    assert len(held) == (64 if STRESS else 8)


def test_dead_node_blocks_reclaimed_after_reclaim_after_on_a_second_pass(etcd, prefix):
    endpoints = etcd.endpoints
    rc, dead, _ = cnictl("claim", request(endpoints, "node-dead", prefix=prefix, ttl=1, node_ips=("10.0.0.9",)))
    assert rc == 0
    rc, live, _ = cnictl("claim", request(endpoints, "node-live", prefix=prefix, ttl=60))
    assert rc == 0
    # The dead node's registration expires with its lease.
    deadline = time.monotonic() + 15
    while prefix + "nodes/node-dead" in store(endpoints, prefix + "nodes/"):
        assert time.monotonic() < deadline, "lease of node-dead never expired"
        time.sleep(0.2)
    gc_args = ["gc", "--endpoints", ",".join(endpoints), "--prefix", prefix, "--reclaim-after", "1"]
    first = cnictl_cli(*gc_args)
    assert first.returncode == 0, first.stderr
    assert "absent node-dead" in first.stdout and "reclaimed" not in first.stdout
    absent, _ = store(endpoints, prefix + "absent/")[prefix + "absent/node-dead"]
    assert absent["seen"] == 1
    assert set(blocks_in_store(endpoints, prefix).values()) == {"node-dead", "node-live"}
    time.sleep(1.2)
    second = cnictl_cli(*gc_args)
    assert second.returncode == 0, second.stderr
    assert f"reclaimed {dead['claimed'][0]} of node-dead" in second.stdout
    assert blocks_in_store(endpoints, prefix) == {live["claimed"][0]: "node-live"}
    assert store(endpoints, prefix + "absent/") == {}, "the absent record goes with the blocks"
    # A third pass changes nothing of the live node.
    third = cnictl_cli(*gc_args)
    assert third.returncode == 0 and "reclaimed" not in third.stdout
    assert blocks_in_store(endpoints, prefix) == {live["claimed"][0]: "node-live"}


def test_absent_record_ends_when_the_node_registers_again(etcd, prefix):
    endpoints = etcd.endpoints
    req = request(endpoints, "node-a", prefix=prefix, ttl=1)
    assert cnictl("claim", req)[0] == 0
    deadline = time.monotonic() + 15
    while prefix + "nodes/node-a" in store(endpoints, prefix + "nodes/"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    gc = cnictl_cli("gc", "--endpoints", ",".join(endpoints), "--prefix", prefix, "--reclaim-after", "0")
    assert gc.returncode == 0 and "absent node-a" in gc.stdout
    assert prefix + "absent/node-a" in store(endpoints, prefix + "absent/")
    rc, renewed, _ = cnictl("renew", {k: v for k, v in req.items() if k != "pool"})
    assert rc == 0 and len(renewed["held"]) == 1
    assert store(endpoints, prefix + "absent/") == {}


def test_release_node_reclaims_at_once(etcd, prefix):
    endpoints = etcd.endpoints
    for _ in range(2):
        assert cnictl("claim", request(endpoints, "node-a", prefix=prefix))[0] == 0
    rc, other, _ = cnictl("claim", request(endpoints, "node-b", prefix=prefix))
    assert rc == 0
    out = cnictl_cli("release-node", "node-a", "--endpoints", ",".join(endpoints), "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    assert "released 2 blocks of node-a" in out.stdout
    assert blocks_in_store(endpoints, prefix) == {other["claimed"][0]: "node-b"}
    assert prefix + "nodes/node-a" not in store(endpoints, prefix + "nodes/")
    show = cnictl_cli("show", "--json", "--endpoints", ",".join(endpoints), "--prefix", prefix)
    assert show.returncode == 0
    shown = json.loads(show.stdout)
    assert [b["node"] for b in shown["blocks"]] == ["node-b"]


@pytest.mark.parametrize("etcd_settings, key", [
    ({"endpoints": ["127.0.0.1:2379"]}, "etcd.endpoints[0]"),
    ({"endpoints": ["http://127.0.0.1:2379", "http://h:99999"]}, "etcd.endpoints[1]"),
    ({"endpoints": []}, "etcd.endpoints"),
    ({"endpoints": ["https://127.0.0.1:2379"], "certFile": "/nonexistent/cert.pem", "keyFile": "/etc/hostname"},
     "etcd.certFile"),
    ({"endpoints": ["https://127.0.0.1:2379"], "caFile": "/nonexistent/ca.pem"}, "etcd.caFile"),
])
def test_bad_etcd_settings_are_code_7_naming_the_key(etcd_settings, key):
    rc, reply, _ = cnictl("claim", {"etcd": etcd_settings, "node": "n", "pool": {"subnet": "10.42.0.0/16"}})
    assert rc != 0 and reply["code"] == 7, reply
    assert key in reply["msg"], reply


def test_bad_request_is_code_7_naming_the_key():
    rc, reply, _ = cnictl("claim", {"etcd": {"endpoints": ["http://127.0.0.1:1"]}, "node": "n",
                                    "pool": {"subnet": "10.42.0.0/16", "blockSize": 12}})
    assert rc != 0 and reply["code"] == 7 and "pool.blockSize" in reply["msg"], reply
    rc, reply, _ = cnictl("release", {"etcd": {"endpoints": ["http://127.0.0.1:1"]}, "node": "a/b", "blocks": []})
    assert rc != 0 and reply["code"] == 7 and "node" in reply["msg"], reply


def test_tls_with_client_certificates(etcd_tls, prefix):
    tls = etcd_tls.tls
    settings = {"endpoints": etcd_tls.endpoints, "prefix": prefix, "caFile": tls["ca"],
                "certFile": tls["client_cert"], "keyFile": tls["client_key"]}
    req = request(etcd_tls.endpoints, "node-a", prefix=prefix)
    req["etcd"] = settings
    rc, reply, _ = cnictl("claim", req)
    assert rc == 0, reply
    assert len(reply["claimed"]) == 1
    # Without the CA the server's certificate is not trusted: a settings error, not "try later".
    rc, reply, _ = cnictl("renew", dict(req, etcd={k: v for k, v in settings.items() if k != "caFile"}))
    assert rc != 0 and reply["code"] == 7 and "etcd.caFile" in reply["msg"], reply
    # Without a client certificate the server refuses the handshake: nothing is written.
    no_cert = {k: v for k, v in settings.items() if k not in ("certFile", "keyFile")}
    rc, reply, elapsed = cnictl("claim", dict(req, etcd=no_cert))
    assert rc != 0 and reply["code"] in (7, 11), reply
    assert elapsed < 5
    # A key that does not match the certificate is named as a settings error.
    rc, reply, _ = cnictl("renew", dict(req, etcd=dict(settings, keyFile=tls["server_key"])))
    assert rc != 0 and reply["code"] == 7 and "etcd.certFile" in reply["msg"], reply
    # The CLI takes the same settings as flags.
    show = cnictl_cli("show", "--json", "--endpoints", ",".join(etcd_tls.endpoints), "--prefix", prefix,
                      "--cacert", tls["ca"], "--cert", tls["client_cert"], "--key", tls["client_key"])
    assert show.returncode == 0, show.stderr
    assert [b["node"] for b in json.loads(show.stdout)["blocks"]] == ["node-a"]


def test_plugins_binary_does_not_link_libcurl():
    plugins = BIN_DIR / "bridge"
    ldd = subprocess.run(["ldd", str(plugins)], capture_output=True, text=True)
    assert "libcurl" not in ldd.stdout
    assert b"curl_easy_perform" not in plugins.read_bytes()
    assert b"curl_easy_perform" in CNICTL.read_bytes() or "libcurl" in subprocess.run(
        ["ldd", str(CNICTL)], capture_output=True, text=True).stdout


def test_network_settings_and_check_against_the_local_record(etcd, prefix, tmp_path):
    # The store settings, node and pools come from a network's cluster-ipam section.
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    data_dir = tmp_path / "data"
    network = unique("cnet", 12)
    ipam = {"type": "cluster-ipam", "etcd": {"endpoints": etcd.endpoints, "prefix": prefix}, "node": "node-n",
            "nodeIPs": ["10.0.0.7"], "dataDir": str(data_dir), "pools": [{"subnet": "10.47.0.0/24"}]}
    (conf_dir / "10-cluster.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": network, "plugins": [{"type": "bridge", "bridge": "cbr9", "ipam": ipam}]}))
    common = ["--network", network, "--conf-dir", str(conf_dir)]
    claim = cnictl_cli("claim", *common)
    assert claim.returncode == 0, claim.stderr
    held = blocks_in_store(etcd.endpoints, prefix)
    assert list(held.values()) == ["node-n"] and list(held)[0].startswith("10.47.0.")
    block = list(held)[0]
    node, _ = store(etcd.endpoints, prefix + "nodes/")[prefix + "nodes/node-n"]
    assert node["nodeIPs"] == ["10.0.0.7"]

    # The plugin's record (<dataDir>/<network>/cluster-blocks.json) agrees: exit 0.
    local = data_dir / network / "cluster-blocks.json"
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps({"node": "node-n", "registeredAt": int(time.time()),
                                 "blocks": [{"cidr": block, "pool": "10.47.0.0/24", "emptySince": None}]}))
    check = cnictl_cli("check", *common)
    assert check.returncode == 0 and f"ok {block}" in check.stdout, check.stdout + check.stderr
    # A block held locally that the store does not give this node is the dangerous case.
    local.write_text(json.dumps({"node": "node-n", "registeredAt": int(time.time()),
                                 "blocks": [{"cidr": block, "pool": "10.47.0.0/24", "emptySince": None},
                                            {"cidr": "10.47.0.192/26", "pool": "10.47.0.0/24", "emptySince": None}]}))
    if "10.47.0.192/26" not in held:
        check = cnictl_cli("check", *common)
        assert check.returncode == 1 and "LOST 10.47.0.192/26" in check.stdout, check.stdout
    # A claim of this node the record does not know (a reply lost) is reported too.
    local.write_text(json.dumps({"node": "node-n", "registeredAt": 0, "blocks": []}))
    check = cnictl_cli("check", *common)
    assert check.returncode == 1 and f"UNKNOWN {block}" in check.stdout, check.stdout


def test_a_block_of_another_size_overlapping_is_never_claimed(etcd, prefix):
    # node-a uses /25 blocks of the pool, node-b /26: node-b must skip the halves of a's blocks.
    pool = "10.48.0.0/24"
    taken = []
    for _ in range(2):
        rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-a", prefix=prefix, pool=pool, block_size=25))
        assert rc == 0, reply
        taken += reply["claimed"]
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-b", prefix=prefix, pool=pool, block_size=26))
    assert rc != 0 and reply["code"] == 102, reply
    assert blocks_in_store(etcd.endpoints, prefix) == {block: "node-a" for block in taken}


def test_release_and_release_node_beyond_one_txn(etcd, prefix):
    # etcd takes at most 128 operations per txn: 150 blocks are released in batches.
    endpoints = etcd.endpoints
    held = []
    for _ in range(3):
        rc, reply, _ = cnictl("claim", request(endpoints, "node-a", prefix=prefix, pool="10.49.0.0/16", count=50))
        assert rc == 0, reply
        assert len(reply["claimed"]) == 50
        held += reply["claimed"]
    assert len(set(held)) == 150
    release = {"etcd": {"endpoints": endpoints, "prefix": prefix}, "node": "node-a", "blocks": held[:140]}
    rc, reply, _ = cnictl("release", release)
    assert rc == 0 and sorted(reply["released"]) == sorted(held[:140]) and reply["notOwned"] == [], reply
    for _ in range(2):
        assert cnictl("claim", request(endpoints, "node-a", prefix=prefix, pool="10.49.0.0/16", count=64))[0] == 0
    assert len(blocks_in_store(endpoints, prefix)) == 138
    out = cnictl_cli("release-node", "node-a", "--endpoints", ",".join(endpoints), "--prefix", prefix)
    assert out.returncode == 0 and "released 138 blocks of node-a" in out.stdout, out.stdout + out.stderr
    assert blocks_in_store(endpoints, prefix) == {}


def test_a_claim_whose_answer_is_lost_is_resent_and_takes_one_block(etcd, prefix):
    # An endpoint that applies the claim's txn and then drops the connection (the answer lost,
    # as with a timeout after commit): cnictl resends the txn to the next endpoint, which must
    # recognise the block it already took instead of taking a second one.
    with answer_losing_proxy(etcd.endpoints[0], is_claim_txn) as (proxy, dropped):
        rc, reply, _ = cnictl("claim", request([proxy] + etcd.endpoints, "node-a", prefix=prefix))
    assert dropped, "the proxy never saw the claim's txn"
    assert rc == 0, reply
    assert len(reply["claimed"]) == 1 and reply["held"] == reply["claimed"], reply
    assert blocks_in_store(etcd.endpoints, prefix) == {reply["claimed"][0]: "node-a"}


def test_gc_from_every_node_at_once_reclaims_each_dead_block_once(etcd, prefix):
    endpoints = etcd.endpoints
    dead = []
    for _ in range(3):
        rc, reply, _ = cnictl("claim", request(endpoints, "node-dead", prefix=prefix, ttl=1))
        assert rc == 0
        dead += reply["claimed"]
    rc, live, _ = cnictl("claim", request(endpoints, "node-live", prefix=prefix, ttl=60))
    assert rc == 0
    deadline = time.monotonic() + 15
    while prefix + "nodes/node-dead" in store(endpoints, prefix + "nodes/"):
        assert time.monotonic() < deadline, "lease of node-dead never expired"
        time.sleep(0.2)
    gc = ["gc", "--endpoints", ",".join(endpoints), "--prefix", prefix, "--reclaim-after", "0"]
    outputs = []
    for _ in range(3):
        runs = run_parallel(6, lambda i: cnictl_cli(*gc))
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        outputs += [r.stdout for r in runs]
    reclaimed = [line for out in outputs for line in out.splitlines() if line.startswith("reclaimed ")]
    assert sorted(reclaimed) == sorted(f"reclaimed {block} of node-dead" for block in dead), reclaimed
    assert blocks_in_store(endpoints, prefix) == {live["claimed"][0]: "node-live"}
    assert store(endpoints, prefix + "absent/") == {}


def test_a_count_beyond_what_is_left_claims_the_rest(etcd, prefix):
    pool = "10.50.0.0/24"  # 4 blocks
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-a", prefix=prefix, pool=pool, count=3))
    assert rc == 0 and len(reply["claimed"]) == 3, reply
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-b", prefix=prefix, pool=pool, count=3))
    assert rc == 0 and len(reply["claimed"]) == 1 and reply["held"] == reply["claimed"], reply
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-b", prefix=prefix, pool=pool, count=3))
    assert rc != 0 and reply["code"] == 102, reply
    assert len(blocks_in_store(etcd.endpoints, prefix)) == 4




def test_claim_of_one_named_block(etcd, prefix):
    # The requested-IP path: the plugin asks for the block of the address, and nothing else.
    pool = "10.51.0.0/24"
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-a", prefix=prefix, pool=pool, block="10.51.0.128/26"))
    assert rc == 0 and reply["claimed"] == ["10.51.0.128/26"], reply
    # Again: already ours, counted.
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-a", prefix=prefix, pool=pool, block="10.51.0.128/26"))
    assert rc == 0 and reply["claimed"] == ["10.51.0.128/26"] and reply["held"] == ["10.51.0.128/26"], reply
    # Another node's: code 102 naming the block and its node; nothing changed.
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-b", prefix=prefix, pool=pool, block="10.51.0.128/26"))
    assert rc != 0 and reply["code"] == 102, reply
    assert "10.51.0.128/26" in reply["msg"] and "node-a" in reply["msg"], reply
    # Not a block of the pool: code 7.
    rc, reply, _ = cnictl("claim", request(etcd.endpoints, "node-b", prefix=prefix, pool=pool, block="10.51.0.128/25"))
    assert rc != 0 and reply["code"] == 7 and "block" in reply["msg"], reply
    assert blocks_in_store(etcd.endpoints, prefix) == {"10.51.0.128/26": "node-a"}


def test_a_fresh_registration_is_kept_by_claims_and_a_lost_one_renewed(etcd, prefix):
    # A claim does not grant a new lease while the registration is at most half its lease old:
    # the record and its lease stay, and the reply carries its registeredAt.
    req = request(etcd.endpoints, "node-a", prefix=prefix, ttl=4)
    rc, first, _ = cnictl("claim", req)
    assert rc == 0, first
    record, lease = store(etcd.endpoints, prefix + "nodes/")[prefix + "nodes/node-a"]
    rc, second, _ = cnictl("claim", req)
    assert rc == 0, second
    assert len(second["held"]) == 2
    assert store(etcd.endpoints, prefix + "nodes/")[prefix + "nodes/node-a"] == (record, lease)
    assert second["registeredAt"] == first["registeredAt"] == record["registeredAt"]
    # The lease revoked (the registration gone, as if it expired): the claim registers anew.
    revoke = urllib.request.Request(etcd.endpoints[0] + "/v3/lease/revoke",
                                    data=json.dumps({"ID": lease}).encode(), method="POST")
    urllib.request.urlopen(revoke, timeout=2).read()
    assert prefix + "nodes/node-a" not in store(etcd.endpoints, prefix + "nodes/")
    rc, third, _ = cnictl("claim", req)
    assert rc == 0, third
    assert len(third["held"]) == 3
    _, renewed_lease = store(etcd.endpoints, prefix + "nodes/")[prefix + "nodes/node-a"]
    assert renewed_lease and renewed_lease != lease
    # Past half the lease (ages are whole seconds: 3 > 4 / 2 whatever the fraction), a claim
    # renews it too.
    time.sleep(3.1)
    rc, fourth, _ = cnictl("claim", req)
    assert rc == 0, fourth
    _, later_lease = store(etcd.endpoints, prefix + "nodes/")[prefix + "nodes/node-a"]
    assert later_lease != renewed_lease and fourth["registeredAt"] > third["registeredAt"]
