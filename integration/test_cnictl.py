"""cnictl against real attachments: ps, ipam show/check/release and gc.

Attachments are made by our plugins (bridge + host-local, ipMasq) exec'd as a runtime does, and
through libcni (its result cache), all inside a "host" namespace the test created, where cnictl
runs too (`ip netns exec`), so it sees that namespace's links and rules. Then each kind of leak is
planted the way it happens: a netns deleted without DEL, an ADD killed with SIGKILL while its IPAM
step ran, a lease written by the reference host-local for a container that never existed, an
empty lease file (the reference's O_EXCL create of a killed plugin), a lease file removed by hand
under a libcni attachment. `check` must report exactly those, `release`/`gc` fix them, and a
second `check` is clean.
"""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clients.common import assemble_plugin_dir, free_subnet
from clients.libcni import LibcniClient, build_client
from cnitest import BIN_DIR, REF_DIR, run_plugin, sh, unique
from test_bridge_support import global_addresses, link, links, nat_rules, nft_comments, run_in, world  # noqa: F401

CNICTL = BIN_DIR / "cnictl"


@pytest.fixture(scope="module", autouse=True)
def built_cnictl():
    if not CNICTL.exists():
        pytest.fail(f"{CNICTL} missing (run `make build`)")


class Node:
    """A world with cnictl's view: a conf dir holding the network's conflist and a cache dir."""

    def __init__(self, world, tmp_path, dual_stack=True, backend=None):
        self.world = world
        self.conf_dir = tmp_path / "net.d"
        # libcni's cache root (the runtime's CacheDir); its entries go to <root>/results.
        self.cache_root = tmp_path / "cni"
        self.cache_dir = self.cache_root / "results"
        self.conf_dir.mkdir()
        self.cache_dir.mkdir(parents=True)
        self.v4 = free_subnet()
        self.v6 = f"fd00:{random.randint(0x1000, 0xffff):x}:{random.randint(0, 0xffff):x}::/64"
        ranges = [[{"subnet": self.v4}]] + ([[{"subnet": self.v6}]] if dual_stack else [])
        self.ipam = {"type": "host-local", "ranges": ranges, "dataDir": world.data_dir}
        self.plugin = {"type": "bridge", "bridge": world.bridge, "isGateway": True, "ipMasq": True,
                       "ipam": self.ipam}
        if backend:
            self.plugin["ipMasqBackend"] = backend
        self.conflist = {"cniVersion": "1.1.0", "name": world.network, "plugins": [self.plugin]}
        (self.conf_dir / "10-test.conflist").write_text(json.dumps(self.conflist))
        self.lease_dir = Path(world.data_dir) / world.network

    def config(self, version="1.1.0"):
        """The plugin's own config, as libcni builds it from the conflist."""
        return {"cniVersion": version, "name": self.world.network, **self.plugin}

    def cnictl(self, *argv, expect=0):
        proc = subprocess.run(
            ["ip", "netns", "exec", self.world.host.name, str(CNICTL), *argv, "--conf-dir", str(self.conf_dir),
             "--cache-dir", str(self.cache_dir)], capture_output=True, text=True, timeout=60)
        if expect is not None:
            assert proc.returncode == expect, f"cnictl {argv}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *argv, expect=0):
        return json.loads(self.cnictl(*argv, "--json", expect=expect).stdout)

    def add(self, container, cid, **kwargs):
        run = self.world.run("ADD", self.config(), container, containerid=cid, **kwargs)
        assert run.ok, str(run)
        return run.json

    def leases(self):
        return sorted(p.name for p in self.lease_dir.iterdir() if p.name[0].isdigit() or ":" in p.name)


@pytest.fixture
def node(world, tmp_path):
    return Node(world, tmp_path)


def findings(node, expect=1):
    return sorted((f["kind"], f["subject"]) for f in node.json("ipam", "check", expect=expect))


def ips(result, family=None):
    return [ip["address"].split("/")[0] for ip in result["ips"]
            if family is None or (":" in ip["address"]) == (family == 6)]


def kill_mid_add(node, container, cid, tmp_path):
    """An ADD SIGKILLed while its (delegated) IPAM step runs: host-local has taken the leases, the
    bridge has made the veth, nothing has set addresses."""
    slow = tmp_path / "slow-ipam"
    slow.mkdir()
    marker = tmp_path / "ipam-done"
    script = slow / "host-local"
    script.write_text(f"#!/bin/sh\nout=$({BIN_DIR}/host-local)\necho done > {marker}\nsleep 60\nprintf '%s' \"$out\"\n")
    script.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": container.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": str(slow)}
    proc = subprocess.Popen(["ip", "netns", "exec", node.world.host.name, str(BIN_DIR / "bridge")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    proc.stdin.write(json.dumps(node.config()).encode())
    proc.stdin.close()
    try:
        deadline = time.time() + 30
        while not (marker.exists() and link(container, "eth0") is not None):
            assert time.time() < deadline, "the ADD never reached its IPAM step"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_help_for_every_command_and_one_line_errors(node):
    commands = ([], ["ps"], ["ipam"], ["ipam", "show"], ["ipam", "check"], ["ipam", "release"], ["ipam", "reindex"],
                ["gc"])
    for argv in commands:
        proc = subprocess.run([str(CNICTL), *argv, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "USAGE:" in proc.stdout, (argv, proc.stdout, proc.stderr)
    bad = node.cnictl("ps", "--network", "nosuch", expect=1)
    assert bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
    assert f'no network "nosuch"' in bad.stderr and node.world.network in bad.stderr
    bad = node.cnictl("ipam", "release", "not-an-ip", "--network", node.world.network, expect=64)
    assert bad.stderr == "cnictl: \"not-an-ip\" is not an IP address (see 'cnictl ipam release --help')\n"
    bad = node.cnictl("gc", "--network", node.world.network, expect=64)
    assert bad.stderr.startswith("cnictl: pass either --valid") and bad.stderr.count("\n") == 1
    bad = node.cnictl("ipam", "show", "--bogus", expect=64)
    assert bad.stderr == "cnictl: Unknown option '--bogus' (see 'cnictl ipam show --help')\n"


def test_ps_and_show_list_live_attachments_from_leases_cache_and_kernel(node, tmp_path):
    world = node.world
    plain = world.container()
    a = node.add(plain, "ctr-plain-0001")
    # One through libcni: its result cache names the runtime. (Debian's libcni predates 1.1.0.)
    pod = world.container()
    runtime_conf = tmp_path / "runtime.conflist"
    runtime_conf.write_text(json.dumps({**node.conflist, "cniVersion": "1.0.0"}))
    libcni = LibcniClient(build_client(), assemble_plugin_dir(tmp_path / "plugins"), node.cache_root, world.host.name)
    added = libcni("add", runtime_conf, id="ctr-libcni-0002", netns=pod.path,
                   args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")
    assert added["ok"], added

    rows = {r["containerID"]: r for r in node.json("ps")}
    assert sorted(rows) == ["ctr-libcni-0002", "ctr-plain-0001"]
    plain_row = rows["ctr-plain-0001"]
    assert plain_row["addresses"] == sorted((ip["address"] for ip in a["ips"]), key=lambda s: ":" in s)
    assert plain_row["containerMAC"] == link(plain, "eth0")["address"]
    assert plain_row["hostVeth"] == a["interfaces"][1]["name"]
    assert plain_row["bridge"] == world.bridge and plain_row["netns"] == plain.path
    assert plain_row["runtime"] is None and plain_row["sources"] == ["lease", "record", "kernel"]
    pod_row = rows["ctr-libcni-0002"]
    assert pod_row["runtime"] == "libcni (pod default/web-1)" and pod_row["netns"] == pod.path
    assert pod_row["containerMAC"] == link(pod, "eth0")["address"]
    assert pod_row["sources"] == ["lease", "cache", "record", "kernel"]

    table = node.cnictl("ps", "--network", world.network).stdout.splitlines()
    assert table[0].split() == ["NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "MAC", "HOST", "VETH", "BRIDGE",
                                "NETNS", "RUNTIME"]
    assert "\x1b[" not in "".join(table), "no colours when stdout is not a terminal"
    assert any("ctr-plain-00" in line and "ctr-plain-0001" not in line for line in table), "short IDs"

    show = node.json("ipam", "show", "--network", world.network)
    assert [(r["subnet"], r["leased"], r["total"], r["free"]) for r in show] == [
        (node.v4, 2, 253, 251), (node.v6, 2, 2**64 - 2, 2**64 - 4)]
    v4 = show[0]
    assert v4["gateway"] == node.v4.replace(".0/24", ".1") and v4["next"] == node.v4.replace(".0/24", ".4")
    assert node.json("ipam", "check") == []
    assert node.cnictl("ipam", "check").stdout.strip() == "no inconsistencies found"

    # A live address is refused, with its holder named.
    refused = node.cnictl("ipam", "release", ips(a, 4)[0], "--network", world.network, expect=1)
    assert "refusing to release" in refused.stderr and plain.path in refused.stderr
    kept = node.cnictl("ipam", "release", ips(a, 4)[0], "--network", world.network, "--if-leaked")
    assert kept.stdout.startswith("kept ")
    assert ips(a, 4)[0] in node.leases()

    deleted = libcni("del", runtime_conf, id="ctr-libcni-0002", netns=pod.path)
    assert deleted["ok"], deleted
    assert [r["containerID"] for r in node.json("ps")] == ["ctr-plain-0001"]


def masquerade_owners(node, backend):
    """The container IDs the host namespace's masquerade rules name."""
    if backend == "nftables":
        return " ".join(nft_comments(node.world.host, "inet", "cni_plugins_masquerade"))
    return " ".join(nat_rules(node.world.host))


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_check_reports_each_planted_leak_and_release_and_gc_fix_them(world, tmp_path, backend):
    node = Node(world, tmp_path, backend=backend)
    live = world.container()
    a = node.add(live, "ctr-live")

    # 1. A container whose netns was deleted without DEL: its leases and rules stay.
    gone = world.container()
    b = node.add(gone, "ctr-gone")
    sh("ip", "netns", "del", gone.name)
    # 2. An ADD killed mid-way: leases taken, veth made, no address set.
    killed = world.container()
    kill_mid_add(node, killed, "ctr-killed", tmp_path)
    killed_leases = sorted(set(node.leases()) - set(ips(a)) - set(ips(b)))
    assert len(killed_leases) == 2
    killed_veth = [p for p in links(world.host) if p.startswith("veth") and p not in
                   (a["interfaces"][1]["name"], b["interfaces"][1]["name"])]
    assert len(killed_veth) == 1
    # 3. A lease of the reference host-local for a container that never existed.
    ref = run_in(world.host, REF_DIR / "host-local", "ADD", node.config("1.0.0"), containerid="ctr-reference",
                 netns=live.path)
    assert ref.ok, str(ref)
    # 4. An empty lease file (the reference's O_EXCL create, then killed before its write).
    empty = node.v4.replace(".0/24", ".200")
    (node.lease_dir / empty).write_text("")

    found = findings(node)
    expected = sorted(
        [("lease-without-attachment", ip) for ip in ips(b) + killed_leases + ips(ref.json)]
        + [("veth-without-lease", killed_veth[0]), ("empty-lease", empty)])
    assert found == expected
    reasons = {f["subject"]: f["reason"] for f in node.json("ipam", "check", expect=1)}
    # The bridge's attachment record still names the deleted namespace; the killed ADD left none.
    assert reasons[ips(b)[0]] == f"its netns {gone.path} no longer exists"
    assert "no cache entry or attachment record names it" in reasons[killed_leases[0]]
    assert f"its peer eth0 in {killed.path} holds no address" in reasons[killed_veth[0]]
    assert "is empty" in reasons[empty]
    table = node.cnictl("ipam", "check", expect=1).stdout.splitlines()
    assert table[0].split() == ["NETWORK", "KIND", "SUBJECT", "CONTAINER", "IFNAME", "REASON"]
    assert len(table) == 1 + len(expected)

    # ps shows the stray veth as a row of its own, with its peer's namespace.
    rows = node.json("ps")
    stray = [r for r in rows if r["sources"] == ["kernel"]]
    assert [(r["hostVeth"], r["netns"], r["ifname"]) for r in stray] == [(killed_veth[0], killed.path, "eth0")]

    # Release the gone container's leases one by one, under the lock; its rules remain.
    for address in ips(b):
        out = node.cnictl("ipam", "release", address, "--network", world.network, "--if-leaked").stdout
        assert out.startswith(f"released {address} (container \"ctr-gone\"")
    rules = [subject for kind, subject in findings(node) if kind == "rules-without-lease"]
    if backend == "nftables":
        # One rule per address, each found by its comment.
        assert len(rules) == 2 and all(r.startswith("nft inet cni_plugins_masquerade masq_checks handle ") for r in rules)
    else:
        assert rules == ["ip6tables-save nat", "iptables-save nat"]
    assert "ctr-gone" in masquerade_owners(node, backend)
    # The empty file too.
    node.cnictl("ipam", "release", empty, "--network", world.network)

    # GC with the one valid attachment: the plugins release the rest and drop the rules.
    gc = node.cnictl("gc", "--network", world.network, "--valid", "ctr-live/eth0", "--cni-path", str(BIN_DIR))
    assert gc.stdout.strip() == "gc bridge: ok (kept 1 attachment)", gc.stdout + gc.stderr
    assert node.leases() == sorted(ips(a))
    assert "ctr-gone" not in masquerade_owners(node, backend)
    assert "ctr-live" in masquerade_owners(node, backend), "the valid attachment keeps its rules"
    assert findings(node) == [("veth-without-lease", killed_veth[0])]
    # What is left is the killed ADD's veth; the runtime's DEL (which the spec requires) removes it.
    cleaned = world.run("DEL", node.config(), killed, containerid="ctr-killed")
    assert cleaned.ok, str(cleaned)
    assert node.json("ipam", "check") == []
    assert [r["containerID"] for r in node.json("ps")] == ["ctr-live"]
    assert link(live, "eth0") is not None and sorted(global_addresses(live, "eth0")) == sorted(
        ip["address"] for ip in a["ips"])


def test_gc_from_cache_keeps_what_libcni_knows(world, tmp_path):
    node = Node(world, tmp_path, dual_stack=False)  # IPv4 only
    pod = world.container()
    runtime_conf = tmp_path / "runtime.conflist"
    runtime_conf.write_text(json.dumps({**node.conflist, "cniVersion": "1.0.0"}))
    libcni = LibcniClient(build_client(), assemble_plugin_dir(tmp_path / "plugins"), node.cache_root, world.host.name)
    added = libcni("add", runtime_conf, id="ctr-cached", netns=pod.path)
    assert added["ok"], added
    orphan = world.container()
    uncached = node.add(orphan, "ctr-uncached")
    assert len(findings(node, expect=0)) == 0
    node.cnictl("gc", "--network", world.network, "--from-cache", "--cni-path", str(BIN_DIR))
    owners = {(node.lease_dir / p).read_bytes().decode().split("\r\n")[0] for p in node.leases()}
    assert owners == {"ctr-cached"}, "GC released the uncached container's lease only"

    # A cache entry whose lease file was removed by hand; the runtime's DEL clears it.
    [lease] = node.leases()
    (node.lease_dir / lease).unlink()
    # Its rules and its veth lose their lease with it: each is reported, as is the veth of the
    # uncached container, whose lease GC released (GC removes no links).
    assert findings(node) == sorted([
        ("cache-without-lease", str(node.cache_dir / f"{world.network}-ctr-cached-eth0")),
        ("rules-without-lease", "iptables-save nat"),
        ("veth-without-lease", added["result"]["interfaces"][1]["name"]),
        ("veth-without-lease", uncached["interfaces"][1]["name"])])
    deleted = libcni("del", runtime_conf, id="ctr-cached", netns=pod.path)
    assert deleted["ok"], deleted
    assert world.run("DEL", node.config(), orphan, containerid="ctr-uncached").ok
    assert node.json("ipam", "check") == []


def test_a_stale_index_and_a_partial_lease_are_reported(node):
    world = node.world
    c = world.container()
    node.add(c, "ctr-indexed")
    index_dir = Path(world.data_dir) / ".swift-cni-index" / world.network
    [bucket] = [p for p in index_dir.iterdir() if p.name.startswith("b")]
    # Rewritten in place: the directory stamps still claim the index is complete.
    with open(bucket, "r+") as f:
        f.write("swift-cni-index 2\nctr-indexed eth0 " + node.v4.replace(".0/24", ".99") + "\n")
        f.truncate()
    found = findings(node)
    assert found == [("stale-index", f".swift-cni-index/{world.network}")]
    assert node.cnictl("ipam", "reindex", "--network", world.network).stdout.startswith("rebuilt")
    assert node.json("ipam", "check") == []
    partial = node.v4.replace(".0/24", ".201")
    (node.lease_dir / partial).write_text("ctr-half\r\n")
    assert ("partial-lease", partial) in findings(node)
    node.cnictl("ipam", "release", partial, "--network", world.network)
    assert not (node.lease_dir / partial).exists()
    # The release went through the store: the index entry went with the file.
    assert node.json("ipam", "check") == []


def test_attachment_records_make_namespaces_outside_run_netns_known(node, tmp_path):
    """A runtime without libcni's cache and a netns bound outside /run/netns: only the bridge's
    attachment record tells cnictl where the container is."""
    world = node.world
    ns_file = tmp_path / "netns-elsewhere"
    ns_file.touch()
    sh("unshare", f"--net={ns_file}", "true")
    try:
        run = world.run("ADD", node.config(), None, containerid="ctr-elsewhere", netns=str(ns_file))
        assert run.ok, str(run)
        record = Path(world.data_dir) / ".swift-cni-attachments" / world.network / "ctr-elsewhere=eth0"
        text = record.read_text()
        assert "netns " + str(ns_file).replace("/", "%2F") in text, text
        [row] = node.json("ps")
        assert row["netns"] == str(ns_file) and row["sources"] == ["lease", "record", "kernel"]
        assert row["containerMAC"] == run.json["interfaces"][2]["mac"]
        assert node.json("ipam", "check") == []

        # Without the record neither the lease nor the host veth has a known holder.
        saved = record.read_bytes()
        record.unlink()
        assert {kind for kind, _ in findings(node)} == {"lease-without-attachment", "veth-without-lease"}
        record.write_bytes(saved)

        deleted = world.run("DEL", node.config(), None, containerid="ctr-elsewhere", netns=str(ns_file))
        assert deleted.ok, str(deleted)
        assert not record.exists(), "DEL removes the record"
        assert node.json("ps") == [] and node.json("ipam", "check") == []
    finally:
        subprocess.run(["umount", str(ns_file)], capture_output=True)


def test_releases_under_the_lock_race_parallel_adds_safely(world, tmp_path):
    """cnictl releases leaked leases while ADDs allocate in parallel: the shared lock and the
    plugins' own store keep every address unique, and the index never goes stale."""
    node = Node(world, tmp_path, dual_stack=False)
    leaked = []
    somewhere = world.container()
    for i in range(6):
        ref = run_in(world.host, REF_DIR / "host-local", "ADD", node.config("1.0.0"), containerid=f"ctr-leak-{i}",
                     netns=somewhere.path)
        assert ref.ok, str(ref)
        leaked += ips(ref.json)
    containers = [world.container() for _ in range(8)]
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN_DIR)}
    adds = [subprocess.Popen(["ip", "netns", "exec", world.host.name, str(BIN_DIR / "bridge")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**env, "CNI_CONTAINERID": f"ctr-new-{i}", "CNI_NETNS": c.path})
            for i, c in enumerate(containers)]
    releases = [subprocess.Popen(["ip", "netns", "exec", world.host.name, str(CNICTL), "ipam", "release", address,
                                  "--network", world.network, "--if-leaked", "--conf-dir", str(node.conf_dir),
                                  "--cache-dir", str(node.cache_dir)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for address in leaked]
    for proc in adds:
        proc.stdin.write(json.dumps(node.config()).encode())
        proc.stdin.close()
    results = []
    for proc in adds:
        out = proc.stdout.read()
        assert proc.wait() == 0, out + proc.stderr.read()
        results.append(json.loads(out))
    for proc in releases:
        out, err = proc.communicate()
        assert proc.returncode == 0 and out.startswith(b"released "), out + err
    new = [ips(r)[0] for r in results]
    assert len(set(new)) == len(new), "an address was handed out twice"
    assert node.leases() == sorted(new)
    assert node.json("ipam", "check") == []
    assert [r["containerID"] for r in node.json("ps")] == sorted(f"ctr-new-{i}" for i in range(8))


@pytest.mark.parametrize("portmap", [BIN_DIR / "portmap", REF_DIR / "portmap"], ids=["ours", "reference"])
def test_portmap_rules_of_a_container_without_a_lease_are_reported(node, portmap):
    """portmap's DNAT chain (iptables) for a container this network holds no lease of."""
    world = node.world
    c = world.container()
    config = {"cniVersion": "1.0.0", "name": world.network, "type": "portmap", "capabilities": {"portMappings": True},
              "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
              "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": c.path}],
                             "ips": [{"address": node.v4.replace(".0/24", ".77/24"), "interface": 0}]}}
    added = run_in(world.host, portmap, "ADD", config, containerid="ctr-portmapped", netns=c.path)
    assert added.ok, str(added)
    [finding] = node.json("ipam", "check", expect=1)
    assert (finding["kind"], finding["subject"], finding["containerID"]) == (
        "rules-without-lease", "iptables-save nat (portmap)", "ctr-portmapped")
    assert finding["reason"].startswith("portmap rules")
    deleted = run_in(world.host, portmap, "DEL", config, containerid="ctr-portmapped", netns=c.path)
    assert deleted.ok, str(deleted)
    assert node.json("ipam", "check") == []


def test_ptp_attachments_are_recorded_and_listed(world, tmp_path):
    """ptp (no bridge) writes the same attachment record: ps shows its host veth and namespace."""
    node = Node(world, tmp_path, dual_stack=False)
    ptp = {"type": "ptp", "ipMasq": True, "ipam": node.ipam}
    (node.conf_dir / "10-test.conflist").write_text(json.dumps({"cniVersion": "1.1.0", "name": world.network,
                                                                 "plugins": [ptp]}))
    config = {"cniVersion": "1.1.0", "name": world.network, **ptp}
    c = world.container()
    added = run_in(world.host, "ptp", "ADD", config, containerid="ctr-ptp", netns=c.path)
    assert added.ok, str(added)
    record = Path(world.data_dir) / ".swift-cni-attachments" / world.network / "ctr-ptp=eth0"
    assert record.exists()
    [row] = node.json("ps")
    host_veth = [i["name"] for i in added.json["interfaces"] if not i.get("sandbox")]
    assert row["hostVeth"] == host_veth[0] and row["bridge"] is None and row["netns"] == c.path
    assert row["sources"] == ["lease", "record", "kernel"]
    assert node.json("ipam", "check") == []
    deleted = run_in(world.host, "ptp", "DEL", config, containerid="ctr-ptp", netns=c.path)
    assert deleted.ok, str(deleted)
    assert not record.exists() and node.json("ps") == []
