"""host-local, exec'd as a runtime does: the reference's cases, mixed operation with the
reference binary on one dataDir, concurrency, kill -9 during ADD, GC and STATUS.

Each test has its own dataDir under a temp directory. Nothing here touches the network.
"""

import concurrent.futures
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cnitest import BIN_DIR, REF_DIR, run_plugin

NETNS = "/var/run/netns/ipam-test-unused"  # IPAM plugins never enter it; the skel needs it set
REF = REF_DIR / "host-local"
OURS = "host-local"
needs_reference = pytest.mark.skipif(not REF.exists(), reason=f"reference plugin {REF} missing (make deps)")


@pytest.fixture
def data_dir():
    path = Path(tempfile.mkdtemp(prefix="hostlocal-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def conf(data_dir, version="1.0.0", **ipam):
    ipam.setdefault("ranges", [[{"subnet": "10.1.2.0/24"}]])
    return {"cniVersion": version, "name": "mynet", "type": "ipvlan",
            "ipam": {"type": "host-local", "dataDir": str(data_dir), **ipam}}


def add(config, plugin=OURS, **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin(plugin, "ADD", config, **kw)


def delete(config, plugin=OURS, **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin(plugin, "DEL", config, **kw)


def check(config, plugin=OURS, **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin(plugin, "CHECK", config, **kw)


def addresses(run):
    assert run.ok, run
    return [ip["address"] for ip in run.json["ips"]]


def leases(data_dir, network="mynet"):
    directory = data_dir / network
    result = {}
    if not directory.exists():
        return result
    for entry in directory.iterdir():
        try:
            ipaddress.ip_address(entry.name)
        except ValueError:
            continue
        result[entry.name] = entry.read_bytes()
    return result


# --- The reference's host-local cases ------------------------------------------------------

@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_allocates_and_releases_addresses_with_add_del(data_dir, version):
    resolv = data_dir / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.3\nsearch example.com\n")
    config = conf(data_dir, version, ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
                  routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "1.1.1.1"},
                          {"dst": "2001:db8:2::0/64", "gw": "2001:db8:3::1"}],
                  resolvConf=str(resolv))
    run = add(config, containerid="dummy")
    assert addresses(run) == ["10.1.2.2/24", "2001:db8:1::2/64"]
    assert run.json["cniVersion"] == version
    assert [ip.get("gateway") for ip in run.json["ips"]] == ["10.1.2.1", "2001:db8:1::1"]
    assert len(run.json["routes"]) == 4
    assert run.json["dns"] == {"nameservers": ["192.0.2.3"], "search": ["example.com"]}
    assert (data_dir / "mynet/10.1.2.2").read_bytes() == b"dummy\r\neth0"
    assert (data_dir / "mynet/2001:db8:1::2").read_bytes() == b"dummy\r\neth0"
    assert (data_dir / "mynet/last_reserved_ip.0").read_text() == "10.1.2.2"
    assert (data_dir / "mynet/last_reserved_ip.1").read_text() == "2001:db8:1::2"
    assert oct((data_dir / "mynet/10.1.2.2").stat().st_mode & 0o777) == "0o600"
    if version >= "0.4.0":
        assert check(config, containerid="dummy").ok
    assert delete(config, containerid="dummy").ok
    assert leases(data_dir) == {}


def test_allocates_on_a_specific_interface_and_refuses_duplicates(data_dir):
    config = conf(data_dir)
    assert addresses(add(config, ifname="eth1")) == ["10.1.2.2/24"]
    assert (data_dir / "mynet/10.1.2.2").read_bytes() == b"ctr1\r\neth1"
    again = add(config, ifname="eth1")
    assert again.rc != 0 and again.error_code() == 102
    assert again.json["msg"] == "10.1.2.2 has been allocated to ctr1, duplicate allocation is not allowed"
    assert addresses(add(config, ifname="eth0")) == ["10.1.2.3/24"]
    assert delete(config, ifname="eth1").ok
    assert list(leases(data_dir)) == ["10.1.2.3"]


def test_del_works_on_backwards_compatible_allocations(data_dir):
    config = conf(data_dir)
    (data_dir / "mynet").mkdir()
    (data_dir / "mynet/10.1.2.2").write_bytes(b"dummy")
    assert check(config, containerid="dummy").ok
    assert delete(config, containerid="dummy").ok
    assert leases(data_dir) == {}


def test_del_of_an_unknown_id_does_not_fail(data_dir):
    assert delete(conf(data_dir), containerid="unknown").ok
    assert delete(conf(data_dir, dataDir=str(data_dir / "missing")), containerid="unknown").ok


def test_ignores_whitespace_in_disk_files(data_dir):
    (data_dir / "mynet").mkdir()
    (data_dir / "mynet/10.1.2.9").write_bytes(b"   dummy\r\neth0\n ")
    assert check(conf(data_dir), containerid="dummy").ok
    assert delete(conf(data_dir), containerid="dummy").ok
    assert leases(data_dir) == {}


def test_no_error_output_on_initial_subnet_creation(data_dir):
    run = add(conf(data_dir, dataDir=str(data_dir / "fresh/sub")))
    assert run.ok and run.stderr == ""


def test_allocates_a_custom_ip_requested_by_cni_args(data_dir):
    assert addresses(add(conf(data_dir), args="IP=10.1.2.88")) == ["10.1.2.88/24"]


def test_allocates_custom_ips_from_multiple_ranges_and_protocols(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}],
                                    [{"subnet": "2001:db8:1::/64"}]])
    config["args"] = {"cni": {"ips": ["10.1.2.88", "10.1.3.77", "2001:db8:1::999"]}}
    assert addresses(add(config)) == ["10.1.2.88/24", "10.1.3.77/24", "2001:db8:1::999/64"]


def test_fails_if_a_requested_custom_ip_is_not_used(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]])
    config["args"] = {"cni": {"ips": ["10.1.2.88", "10.1.2.77"]}}
    run = add(config)
    assert not run.ok
    assert run.json["msg"].startswith("failed to allocate all requested IPs: 10.1.2.")
    assert leases(data_dir) == {}


def test_a_taken_requested_ip_names_its_holder(data_dir):
    assert add(conf(data_dir), containerid="abc", args="IP=10.1.2.5").ok
    run = add(conf(data_dir), containerid="other", args="IP=10.1.2.5")
    assert run.error_code() == 102
    assert run.json["msg"] == 'requested IP 10.1.2.5 is already allocated to container "abc" interface "eth0"'


def test_prints_results_in_version_0_2_0(data_dir):
    config = conf(data_dir, "0.2.0", ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
    run = add(config)
    assert run.ok, run
    assert run.json["ip4"]["ip"] == "10.1.2.2/24" and run.json["ip6"]["ip"] == "2001:db8:1::2/64"
    two_v4 = conf(data_dir, "0.2.0", ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]])
    refused = add(two_v4, containerid="other")
    assert refused.json["msg"] == "CNI version 0.2.0 does not support more than 1 address per family"


def test_bottom_and_top_of_the_ipv4_space(data_dir):
    bottom = conf(data_dir, ranges=[[{"subnet": "0.0.0.0/29"}]])
    top = conf(data_dir, ranges=[[{"subnet": "255.255.255.248/29"}]])
    top["name"] = "topnet"
    got_bottom = [addresses(add(bottom, containerid=f"b{i}"))[0] for i in range(5)]
    got_top = [addresses(add(top, containerid=f"t{i}"))[0] for i in range(5)]
    assert got_bottom == [f"0.0.0.{i}/29" for i in range(2, 7)]
    assert got_top == [f"255.255.255.{i}/29" for i in range(250, 255)]
    assert add(top, containerid="t9").error_code() == 102
    assert sorted(leases(data_dir, "topnet")) == [f"255.255.255.{i}" for i in range(250, 255)]


# --- Mixed operation with the reference plugin ----------------------------------------------

@needs_reference
def test_reference_allocates_and_ours_releases(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
    assert addresses(add(config, REF, containerid="c1")) == ["10.1.2.2/24", "2001:db8:1::2/64"]
    assert check(config, containerid="c1").ok
    assert addresses(add(config, containerid="c2")) == ["10.1.2.3/24", "2001:db8:1::3/64"]
    assert delete(config, containerid="c1").ok
    assert sorted(leases(data_dir)) == ["10.1.2.3", "2001:db8:1::3"]


@needs_reference
def test_ours_allocates_and_reference_releases(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
    assert addresses(add(config, containerid="c1")) == ["10.1.2.2/24", "2001:db8:1::2/64"]
    assert check(config, REF, containerid="c1").ok
    assert addresses(add(config, REF, containerid="c2")) == ["10.1.2.3/24", "2001:db8:1::3/64"]
    assert delete(config, REF, containerid="c1").ok
    assert sorted(leases(data_dir)) == ["10.1.2.3", "2001:db8:1::3"]
    # Our index learnt nothing of the reference's changes; it must not matter.
    assert not check(config, containerid="c1").ok
    assert check(config, containerid="c2").ok
    assert add(config, containerid="c2").error_code() == 102  # the reference's lease counts
    assert delete(config, containerid="c2").ok
    assert leases(data_dir) == {}


@needs_reference
def test_interleaved_adds_never_hand_out_an_address_twice(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.2.0/27"}]])
    handed = []
    for i in range(29):
        plugin = REF if i % 3 == 0 else OURS
        handed += addresses(add(config, plugin, containerid=f"c{i}"))
    assert len(handed) == len(set(handed)) == 29
    assert not add(config, containerid="full").ok
    for i in range(0, 29, 2):
        assert delete(config, OURS if i % 4 else REF, containerid=f"c{i}").ok
    assert len(leases(data_dir)) == 14
    owners = {v.split(b"\r\n")[0] for v in leases(data_dir).values()}
    assert owners == {f"c{i}".encode() for i in range(1, 29, 2)}


@needs_reference
def test_reference_and_ours_run_concurrently_without_conflict(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.0.0/24"}]])
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda i: add(config, REF if i % 2 else OURS, containerid=f"c{i}"), range(40)))
    got = [addresses(run)[0] for run in runs]
    assert len(set(got)) == 40


# --- Concurrency ---------------------------------------------------------------------------

def test_parallel_adds_get_distinct_addresses(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "2001:db8:9::/64"}]])
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        runs = list(pool.map(lambda i: add(config, containerid=f"c{i}"), range(64)))
    assert all(run.ok for run in runs), [str(run) for run in runs if not run.ok]
    v4 = [addresses(run)[0] for run in runs]
    v6 = [addresses(run)[1] for run in runs]
    assert len(set(v4)) == 64 and len(set(v6)) == 64
    assert len(leases(data_dir)) == 128


def test_parallel_adds_on_an_almost_full_range(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10",
                                      "rangeEnd": "10.1.2.19"}]])
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        runs = list(pool.map(lambda i: add(config, containerid=f"c{i}"), range(20)))
    succeeded = [run for run in runs if run.ok]
    failed = [run for run in runs if not run.ok]
    assert len(succeeded) == 10 and len(failed) == 10
    assert sorted(addresses(run)[0] for run in succeeded) == sorted(f"10.1.2.{i}/24" for i in range(10, 20))
    for run in failed:
        assert run.error_code() == 102, run
        assert "no IP addresses available in range set: 10.1.2.10-10.1.2.19" in run.json["msg"]


# --- kill -9 during ADD --------------------------------------------------------------------

def test_kill_during_add_leaves_no_partial_lease_and_no_held_lock(data_dir):
    config = conf(data_dir, ranges=[[{"subnet": "10.1.0.0/16"}], [{"subnet": "2001:db8:7::/64"}]])
    import json
    stdin = json.dumps(config).encode()
    env_base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD", "CNI_NETNS": NETNS,
                "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN_DIR)}
    rng = random.Random(1234)
    killed = []
    deadline = time.monotonic() + 15
    i = 0
    while time.monotonic() < deadline:
        cid = f"k{i}"
        proc = subprocess.Popen([str(BIN_DIR / OURS)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**env_base, "CNI_CONTAINERID": cid})
        proc.stdin.write(stdin)
        proc.stdin.close()
        time.sleep(rng.uniform(0, 0.012))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed.append(cid)
        i += 1
        # Every lease file, at every moment, is complete.
        for name, content in leases(data_dir).items():
            assert content.startswith(b"k") and content.endswith(b"\r\neth0"), (name, content)
    assert len(killed) > 100
    holders = {content.split(b"\r\n")[0].decode() for content in leases(data_dir).values()}
    # Some kills landed after the first lease and before the last: a half-done ADD stays visible.
    assert holders, "no kill landed inside an ADD; the test proves nothing"
    # The lock is free, and the store consistent: ours still allocates and sees the rest.
    survivor = add(config, containerid="survivor")
    assert survivor.ok, survivor
    # DEL of every killed ADD that left something (and a sample of the others) cleans up.
    for cid in sorted(holders) + killed[:20]:
        assert delete(config, containerid=cid).ok
    assert sorted(v for v in leases(data_dir).values()) == [b"survivor\r\neth0"] * 2


# --- GC and STATUS -------------------------------------------------------------------------

@needs_reference
def test_gc_releases_everything_not_valid_including_reference_and_legacy_leases(data_dir):
    config = conf(data_dir)
    assert add(config, containerid="keep").ok
    assert add(config, containerid="keep", ifname="eth1").ok
    assert add(config, containerid="stale").ok
    assert add(config, REF, containerid="refstale").ok
    assert add(config, REF, containerid="refkeep").ok
    (data_dir / "mynet/10.1.2.100").write_bytes(b"keep")  # legacy, container valid
    (data_dir / "mynet/10.1.2.101").write_bytes(b"gone")  # legacy, container gone
    gc = conf(data_dir, "1.1.0")
    gc["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"},
                                       {"containerID": "refkeep", "ifname": "eth0"}]
    run = run_plugin(OURS, "GC", gc)
    assert run.ok, run
    owners = sorted(leases(data_dir).values())
    assert owners == [b"keep", b"keep\r\neth0", b"refkeep\r\neth0"]
    assert (data_dir / "mynet/lock").exists() and (data_dir / "mynet/last_reserved_ip.0").exists()


def test_gc_with_an_empty_valid_list_releases_everything(data_dir):
    for i in range(3):
        assert add(conf(data_dir), containerid=f"c{i}").ok
    gc = conf(data_dir, "1.1.0")
    gc["cni.dev/valid-attachments"] = []
    assert run_plugin(OURS, "GC", gc).ok
    assert leases(data_dir) == {}


def test_status(data_dir):
    assert run_plugin(OURS, "STATUS", conf(data_dir, "1.1.0")).ok
    (data_dir / "file").write_text("x")
    run = run_plugin(OURS, "STATUS", conf(data_dir, "1.1.0", dataDir=str(data_dir / "file/sub")))
    assert run.error_code() == 50, run
    assert str(data_dir / "file/sub/mynet") in run.json["msg"]


# --- conf-examples stay valid ----------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "conf-examples"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("host-local-*")))
def test_conf_examples_allocate(data_dir, example):
    import json
    loaded = json.loads((EXAMPLES / example).read_text())
    plugin = loaded["plugins"][0] if "plugins" in loaded else loaded
    config = {**plugin, "cniVersion": loaded["cniVersion"], "name": loaded["name"]}
    config["ipam"] = {**plugin["ipam"], "dataDir": str(data_dir)}
    run = add(config)
    assert run.ok, run
    if "requested" in example:
        assert addresses(run) == ["10.26.0.42/24"]
    if "exclude" in example:
        assert addresses(run) == ["10.27.0.10/24"]  # .1 the gateway, .2-.9 excluded
