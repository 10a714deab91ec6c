"""ptp: ADD/DEL/CHECK/STATUS/GC exec'd as a runtime does, in a private "host" namespace per test.

The plugin runs as `ip netns exec <host> ptp`, so host veths, routes, forwarding sysctls and
firewall rules live in a namespace the test created; containers are further namespaces. Pings
go only between these namespaces. The reference (/usr/lib/cni/ptp, v1.1.1) is driven the same
way for the mixed-DEL tests.
"""

import json
import subprocess
import time

import pytest

from cnitest import BIN_DIR, REF_DIR, run_plugin, unique
from test_bridge_support import global_addresses, ipj, leases, link, links, nat_rules, nft_comments, run_in, with_prev

REFERENCE_PTP = REF_DIR / "ptp"
V4 = "10.79.0.0/24"
V6 = "fd00:79::/64"


class PTPWorld:
    def __init__(self, factory, tmp_path):
        self.factory = factory
        self.host = factory("swph")
        self.network = unique("ptp", 12)
        self.data_dir = str(tmp_path / "leases")

    def container(self):
        return self.factory("swpc")

    def config(self, version="1.0.0", subnets=(V4,), routes=None, **keys):
        ipam = {"type": "host-local", "ranges": [[{"subnet": s}] for s in subnets], "dataDir": self.data_dir}
        if routes is not None:
            ipam["routes"] = routes
        config = {"cniVersion": version, "name": self.network, "type": "ptp", "ipam": ipam}
        config.update(keys)
        return config

    def run(self, command, config, container=None, plugin="ptp", containerid="ctr1", **kwargs):
        netns = kwargs.pop("netns", container.path if container else "")
        return run_in(self.host, plugin, command, config, netns=netns, containerid=containerid, **kwargs)

    def add(self, config, container, **kwargs):
        run = self.run("ADD", config, container, **kwargs)
        assert run.ok, str(run)
        return run.json

    def leases(self):
        return leases(self.data_dir, self.network)

    def host_veths(self):
        return [name for name in links(self.host) if name.startswith("veth")]

    def host_routes(self, family="-4"):
        """Routes through host veths that a plugin added (not the kernel's own for addresses)."""
        return [r for r in ipj(self.host, family, "route", "show")
                if r.get("dev", "").startswith("veth") and r.get("protocol") != "kernel"]


@pytest.fixture
def world(netns_factory, tmp_path):
    return PTPWorld(netns_factory, tmp_path)


def ping(ns, address, count=1):
    argv = ["ping", "-c", str(count), "-W", "2", "-n", address]
    return subprocess.run(["ip", "netns", "exec", ns.name, *argv], capture_output=True, text=True)


def wait_ping(ns, address, seconds=5.0):
    deadline = time.monotonic() + seconds
    while True:
        proc = ping(ns, address)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc


def assert_nothing_left(world, container=None):
    deadline = time.monotonic() + 10
    # A host veth whose peer was in a deleted namespace goes with the kernel's async cleanup.
    while world.host_veths() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.host_veths() == [], "a host veth was left behind"
    assert world.host_routes("-4") == [] and world.host_routes("-6") == [], "a host route was left behind"
    if container is not None and link(container, "eth0") is not None:
        raise AssertionError("eth0 was left in the container")
    assert world.leases() == [], "a lease was left behind"
    assert nat_rules(world.host) == [], "an iptables rule was left behind"
    assert [c for c in nft_comments(world.host) if c] == [], "an nft rule was left behind"


def routes_of(ns, family):
    return {(r["dst"], r.get("gateway"), r.get("scope"), r.get("prefsrc"))
            for r in ipj(ns, family, "route", "show", "dev", "eth0")}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_ipv4_add_check_del(world, version):
    container = world.container()
    config = world.config(version, routes=[{"dst": "0.0.0.0/0"}])
    result = world.add(config, container)
    assert result["cniVersion"] == version
    interfaces = result["interfaces"]
    assert [i["name"] for i in interfaces][1] == "eth0" and interfaces[0]["name"].startswith("veth")
    assert interfaces[1]["sandbox"] == container.path and "sandbox" not in interfaces[0]
    assert result["ips"][0]["address"] == "10.79.0.2/24" and result["ips"][0]["gateway"] == "10.79.0.1"
    if not version.startswith("0.3"):
        assert result["ips"][0]["interface"] == 1
    veth = interfaces[0]["name"]
    assert link(world.host, veth)["address"] == interfaces[0]["mac"]
    assert link(container, "eth0")["address"] == interfaces[1]["mac"]

    # The container: address with its subnet's prefix, no on-link subnet route, everything via gw.
    assert global_addresses(container, "eth0") == ["10.79.0.2/24"]
    assert routes_of(container, "-4") == {
        ("10.79.0.1", None, "link", "10.79.0.2"),
        ("10.79.0.0/24", "10.79.0.1", None, "10.79.0.2"),
        ("default", "10.79.0.1", None, None),
    }
    # The host: the gateway /32 on the veth, a host route to the container.
    assert global_addresses(world.host, veth) == ["10.79.0.1/32"]
    assert [(r["dst"], r.get("scope")) for r in world.host_routes()] == [("10.79.0.2", "host")]
    assert world.host.run("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert world.leases() == ["10.79.0.2"]

    if version >= "0.4.0":
        check = world.run("CHECK", with_prev(config, result), container)
        assert check.ok, str(check)
    assert world.run("DEL", with_prev(config, result), container).ok
    assert_nothing_left(world, container)
    assert world.run("DEL", config, container).ok, "DEL is idempotent"


@pytest.mark.parametrize("families", ["v4", "v6", "dual"])
def test_ping_container_host_and_container_container(world, families):
    subnets = {"v4": (V4,), "v6": (V6,), "dual": (V4, V6)}[families]
    config = world.config(subnets=subnets)
    a, b = world.container(), world.container()
    ra = world.add(config, a, containerid="a")
    rb = world.add(config, b, containerid="b")
    for ip_a, ip_b in zip(ra["ips"], rb["ips"]):
        address_a = ip_a["address"].split("/")[0]
        address_b = ip_b["address"].split("/")[0]
        gateway = ip_a["gateway"]
        for source, target in [(a, gateway), (b, ip_b["gateway"]), (a, address_b), (b, address_a)]:
            proc = wait_ping(source, target)
            assert proc.returncode == 0, f"{source.name} -> {target}: {proc.stdout}{proc.stderr}"
        # The host reaches the containers (through each one's host route).
        for target in (address_a, address_b):
            proc = wait_ping(world.host, target)
            assert proc.returncode == 0, f"host -> {target}: {proc.stdout}{proc.stderr}"
    # No shared L2 segment: a's neighbour table knows only the gateway.
    neighbours = {n["dst"] for n in ipj(a, "neigh", "show", "dev", "eth0") if n.get("state") != ["FAILED"]}
    assert not neighbours & {ip["address"].split("/")[0] for ip in rb["ips"]}
    assert world.run("DEL", config, a, containerid="a").ok
    assert world.run("DEL", config, b, containerid="b").ok
    assert_nothing_left(world)


def test_dual_stack_routes_and_forwarding(world):
    container = world.container()
    config = world.config(subnets=(V4, V6), mtu=1400, routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    result = world.add(config, container)
    veth = result["interfaces"][0]["name"]
    assert link(container, "eth0")["mtu"] == 1400 and link(world.host, veth)["mtu"] == 1400
    assert sorted(global_addresses(world.host, veth)) == ["10.79.0.1/32", "fd00:79::1/128"]
    v6 = routes_of(container, "-6")
    assert ("fd00:79::1", None, None, "fd00:79::2") in v6  # IPv6 routes have no scope
    assert ("fd00:79::/64", "fd00:79::1", None, "fd00:79::2") in v6
    assert ("default", "fd00:79::1", None, None) in v6
    # The kernel's own routes for the /128 gateway and link-local come with the address and the link.
    assert "fd00:79::2" in [r["dst"] for r in world.host_routes("-6") if r.get("protocol") != "kernel"]
    assert world.host.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").strip() == "1"
    check = world.run("CHECK", with_prev(config, result), container)
    assert check.ok, str(check)
    assert world.run("DEL", config, container).ok
    assert_nothing_left(world, container)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ipmasq(world, backend):
    container = world.container()
    config = world.config(subnets=(V4, V6), ipMasq=True, ipMasqBackend=backend)
    world.add(config, container)
    if backend == "iptables":
        assert any("CNI-" in rule for rule in nat_rules(world.host))
    else:
        assert any("ctr1" in c for c in nft_comments(world.host, "inet", "cni_plugins_masquerade"))
    assert world.run("DEL", config, container).ok
    assert_nothing_left(world, container)


def test_failed_add_leaves_nothing(world):
    """The kernel refuses an IPAM route (its gateway is nowhere) after the veth, addresses,
    host route and lease are in place: all of it is undone."""
    container = world.container()
    config = world.config(ipMasq=True, routes=[{"dst": "192.168.0.0/16", "gw": "172.31.9.9"}])
    run = world.run("ADD", config, container)
    assert not run.ok and run.error_code() == 100, str(run)
    assert "192.168.0.0/16" in run.json["msg"]
    assert_nothing_left(world, container)


@pytest.mark.parametrize("state", ["netns-deleted", "netns-empty", "link-gone", "twice"])
def test_del_degraded(world, state):
    container = world.container()
    config = world.config(ipMasq=True)
    result = world.add(config, container)
    netns = container.path
    if state == "netns-deleted":
        subprocess.run(["ip", "netns", "del", container.name], check=True)
    elif state == "netns-empty":
        netns = ""
    elif state == "link-gone":
        container.run("ip", "link", "del", "eth0")
    elif state == "twice":
        assert world.run("DEL", config, netns=netns).ok
    run = world.run("DEL", with_prev(config, result), netns=netns)
    assert run.ok, str(run)
    if state == "netns-empty":
        subprocess.run(["ip", "netns", "del", container.name], check=True)  # the runtime removes it
    assert_nothing_left(world)


def test_del_of_configs_add_refuses(world):
    container = world.container()
    config = world.config(ipMasq=True)
    world.add(config, container)
    edited = dict(config, mtu="x", ipMasqBackend="pf")
    refused = world.run("ADD", edited, container, containerid="other")
    assert refused.error_code() == 7
    run = world.run("DEL", edited, container)
    assert run.ok, str(run)
    assert_nothing_left(world, container)


def test_check_after_tampering(world):
    container = world.container()
    config = world.config()
    result = world.add(config, container)
    veth = result["interfaces"][0]["name"]
    world.host.run("ip", "route", "del", "10.79.0.2", "dev", veth)
    check = world.run("CHECK", with_prev(config, result), container)
    assert check.error_code() == 105 and "host route" in check.json["msg"], str(check)
    container.run("ip", "route", "del", "10.79.0.0/24")
    check = world.run("CHECK", with_prev(config, result), container)
    assert check.error_code() == 105 and "10.79.0.0/24" in check.json["msg"], str(check)
    check = world.run("CHECK", config, container)
    assert check.error_code() in (7, 105) and "prevResult" in check.json["msg"]
    assert world.run("DEL", config, container).ok


def test_status_and_gc(world):
    config = world.config("1.1.0", ipMasq=True)
    assert world.run("STATUS", config).ok
    keep, stale = world.container(), world.container()
    world.add(config, keep, containerid="keep")
    world.add(config, stale, containerid="stale")
    gc = world.run("GC", dict(config, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}))
    assert gc.ok, str(gc)
    assert world.leases() == ["10.79.0.2"]
    chains = [r for r in nat_rules(world.host) if r.startswith(":CNI-")]
    assert len(chains) == 1, chains
    assert world.run("DEL", config, keep, containerid="keep").ok
    subprocess.run(["ip", "netns", "del", stale.name], check=True)
    assert_nothing_left(world)


# ---------------------------------------------------------------------------------------------
# Mixed with the reference: either DEL removes the other's attachment (veth, host route, lease, rules)

needs_reference = pytest.mark.skipif(not REFERENCE_PTP.exists(), reason="reference ptp not installed")


@needs_reference
@pytest.mark.parametrize("adder,deleter", [("reference", "ours"), ("ours", "reference")])
def test_mixed_del(world, adder, deleter):
    plugins = {"ours": BIN_DIR / "ptp", "reference": REFERENCE_PTP}
    container = world.container()
    # iptables: the backend 1.1.1 writes whatever the config says.
    config = world.config("0.4.0", subnets=(V4, V6), ipMasq=True, ipMasqBackend="iptables")
    run = world.run("ADD", config, container, plugin=str(plugins[adder]), path=str(plugins[adder].parent))
    assert run.ok, str(run)
    assert world.leases() and nat_rules(world.host) and world.host_routes()
    run = world.run("DEL", with_prev(config, run.json), container, plugin=str(plugins[deleter]),
                    path=str(plugins[deleter].parent))
    assert run.ok, str(run)
    assert_nothing_left(world, container)


@needs_reference
def test_same_kernel_state_as_the_reference(world):
    """Routes, addresses and sysctls of an attachment are the reference's, on both sides."""
    states = {}
    for who, plugin in [("reference", REFERENCE_PTP), ("ours", BIN_DIR / "ptp")]:
        container = world.container()
        config = world.config(subnets=(V4,), routes=[{"dst": "0.0.0.0/0"}])
        config["ipam"]["dataDir"] = f"{world.data_dir}-{who}"  # both get the first address
        result = world.add(config, container, plugin=str(plugin), path=str(plugin.parent))
        veth = result["interfaces"][0]["name"]
        states[who] = (routes_of(container, "-4"), global_addresses(container, "eth0"),
                       global_addresses(world.host, veth), [(r["dst"], r.get("scope")) for r in world.host_routes()])
        assert world.run("DEL", config, container, plugin=str(plugin), path=str(plugin.parent)).ok
    assert states["ours"] == states["reference"]


def test_conf_examples_parse(world):
    """conf-examples/ptp*.conf are configs ADD accepts (IPAM dataDir redirected to the test's)."""
    from pathlib import Path
    examples = sorted((Path(__file__).resolve().parent.parent / "conf-examples").glob("ptp*.conf*"))
    assert examples, "no ptp examples"
    for path in examples:
        document = json.loads(path.read_text())
        config = document["plugins"][0] if "plugins" in document else document
        config = dict(config, cniVersion=document["cniVersion"], name=world.network)
        config["ipam"] = dict(config["ipam"], dataDir=world.data_dir)
        container = world.container()
        world.add(config, container)
        assert world.run("DEL", config, container).ok, path.name
    assert_nothing_left(world)
