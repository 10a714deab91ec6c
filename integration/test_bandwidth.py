"""bandwidth: ADD/CHECK/DEL exec'd as a runtime does, in a private "host" namespace per test.

The plugin runs as `ip netns exec <host> bandwidth`, so the host veth, its qdiscs and the ifb
live in a namespace the test created; the container is another. The kernel's state is read
independently (`tc -j qdisc`, `tc -j filter`, `ip -j -d link`), and a shaped veth is measured
with a bounded TCP transfer between the two namespaces. The reference (/usr/lib/cni/bandwidth,
v1.1.1) is driven the same way for the mixed-DEL tests.
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from cnitest import REF_DIR, run_plugin, unique

REFERENCE_BANDWIDTH = REF_DIR / "bandwidth"


class World:
    def __init__(self, factory):
        self.host = factory("swbwh")
        self.factory_container = factory("swbwk")
        self.container = factory("swbwc")
        self.network = unique("bw", 10)
        self.veth = "vbw" + unique("", 8)[-8:]
        self.host.run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
                      "netns", self.container.name)
        self.host.run("ip", "addr", "add", "10.78.0.1/24", "dev", self.veth)
        self.host.run("ip", "link", "set", self.veth, "up")
        self.container.run("ip", "addr", "add", "10.78.0.2/24", "dev", "eth0")
        self.container.run("ip", "link", "set", "eth0", "up")

    def ifb(self, containerid="ctr1"):
        return "bwp" + hashlib.sha512((self.network + containerid).encode()).hexdigest()[:12]

    def config(self, **keys):
        prev = {"cniVersion": "1.0.0",
                "interfaces": [{"name": self.veth}, {"name": "eth0", "sandbox": self.container.path}],
                "ips": [{"address": "10.78.0.2/24", "interface": 1}]}
        conf = {"cniVersion": "1.0.0", "name": self.network, "type": "bandwidth", "prevResult": prev}
        conf.update(keys)
        return conf

    def run(self, command, conf, plugin="bandwidth", containerid="ctr1"):
        return run_plugin(plugin, command, conf, netns=self.container.path, containerid=containerid,
                          wrapper=("ip", "netns", "exec", self.host.name))

    def qdiscs(self, dev):
        return json.loads(self.host.run("tc", "-j", "qdisc", "show", "dev", dev))

    def links(self):
        return {l["ifname"]: l for l in json.loads(self.host.run("ip", "-j", "-d", "link", "show"))}


@pytest.fixture
def world(netns_factory):
    return World(netns_factory)


LIMITS = {"ingressRate": 4_000_000, "ingressBurst": 40_000, "egressRate": 8_000_000, "egressBurst": 80_000}


def tbf(qdiscs):
    found = [q for q in qdiscs if q["kind"] == "tbf" and q.get("root")]
    assert len(found) == 1, qdiscs
    return found[0]["options"]


def test_add_builds_the_references_qdiscs_and_del_removes_the_ifb(world):
    conf = world.config(**LIMITS)
    add = world.run("ADD", conf)
    assert add.ok, str(add)
    ifb = world.ifb()
    assert add.json["interfaces"][-1]["name"] == ifb
    links = world.links()
    assert links[ifb]["linkinfo"]["info_kind"] == "ifb"
    # ip -j leaves txqlen out when it is 0.
    assert "UP" in links[ifb]["flags"] and links[ifb].get("txqlen", 0) == 0
    assert links[ifb]["mtu"] == links[world.veth]["mtu"]
    # Ingress: tbf on the host veth, as the reference's numbers (seen: rate 500000 burst 5000 lat 25000).
    ingress = tbf(world.qdiscs(world.veth))
    assert (ingress["rate"], ingress["burst"], ingress["lat"]) == (500000, 5000, 25000)
    assert any(q["kind"] == "ingress" for q in world.qdiscs(world.veth))
    egress = tbf(world.qdiscs(ifb))
    assert (egress["rate"], egress["burst"], egress["lat"]) == (1000000, 10000, 25000)
    filters = json.loads(world.host.run("tc", "-j", "filter", "show", "dev", world.veth, "parent", "ffff:"))
    actions = [a for f in filters for a in f.get("options", {}).get("actions", [])]
    assert actions and all(a["kind"] == "mirred" and a["to_dev"] == ifb and a["mirred_action"] == "redirect"
                           for a in actions)

    conf["prevResult"] = add.json
    check = world.run("CHECK", conf)
    assert check.ok, str(check)
    world.host.run("tc", "qdisc", "del", "dev", ifb, "root")
    check = world.run("CHECK", conf)
    assert not check.ok and check.json["code"] == 105

    delete = world.run("DEL", world.config())
    assert delete.ok, str(delete)
    assert ifb not in world.links()
    assert world.run("DEL", world.config()).ok


def test_bad_limits_change_nothing(world):
    for keys in ({"ingressRate": 1000}, {"egressBurst": 1000}, {"egressRate": 1000, "egressBurst": 34359738360}):
        run = world.run("ADD", world.config(**keys))
        assert not run.ok and run.json["code"] == 7, str(run)
    assert not any(q["kind"] in ("tbf", "ingress") for q in world.qdiscs(world.veth))
    assert world.ifb() not in world.links()


def test_the_capability_is_used_when_the_config_has_no_limits(world):
    add = world.run("ADD", world.config(runtimeConfig={"bandwidth": {"egressRate": 16_000_000,
                                                                     "egressBurst": 160_000}}))
    assert add.ok, str(add)
    assert tbf(world.qdiscs(world.ifb()))["rate"] == 2_000_000
    assert not any(q["kind"] == "tbf" for q in world.qdiscs(world.veth))


@pytest.mark.skipif(not REFERENCE_BANDWIDTH.exists(), reason="reference bandwidth not installed")
@pytest.mark.parametrize("adder,deleter", [("ours", "reference"), ("reference", "ours")])
def test_mixed_del_removes_the_others_ifb(world, adder, deleter):
    plugins = {"ours": "bandwidth", "reference": str(REFERENCE_BANDWIDTH)}
    conf = world.config(**LIMITS)
    add = world.run("ADD", conf, plugin=plugins[adder])
    assert add.ok, str(add)
    assert world.ifb() in world.links()
    conf["prevResult"] = add.json
    if adder == "reference":
        # Our CHECK accepts what the reference built.
        check = world.run("CHECK", conf)
        assert check.ok, str(check)
    delete = world.run("DEL", conf, plugin=plugins[deleter])
    assert delete.ok, str(delete)
    assert world.ifb() not in world.links()


RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.78.0.2", 5201)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); c.settimeout(10)
total, start = 0, None
while True:
    data = c.recv(65536)
    if not data: break
    if start is None: start = time.monotonic()
    total += len(data)
print(total, time.monotonic() - start)
"""


def send(world, size):
    receiver = subprocess.Popen(["ip", "netns", "exec", world.container.name, "python3", "-c", RECEIVER],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        sender = ("import socket; s = socket.create_connection(('10.78.0.2', 5201), timeout=10); "
                  f"s.sendall(b'x' * {size}); s.close()")
        subprocess.run(["ip", "netns", "exec", world.host.name, "python3", "-c", sender], check=True, timeout=20)
        out, _ = receiver.communicate(timeout=20)
    finally:
        receiver.kill()
    total, seconds = out.split()
    assert int(total) == size
    return float(seconds)


def test_a_shaped_veth_measures_near_its_rate(world):
    # 8 Mbit/s to the container (1 MB/s): 2 MB take about 2 s (less the 10 kB burst).
    add = world.run("ADD", world.config(ingressRate=8_000_000, ingressBurst=80_000))
    assert add.ok, str(add)
    size = 2_000_000
    seconds = send(world, size)
    rate = size * 8 / seconds
    assert 0.7 * 8_000_000 < rate < 1.2 * 8_000_000, f"{rate / 1e6:.2f} Mbit/s over {seconds:.2f} s"


def test_the_conf_example_chain_shapes_a_bridge_veth(world, tmp_path):
    """conf-examples/bandwidth-kubelet.conflist's bridge and bandwidth (bridge name and dataDir
    made private), the limits as containerd passes them (the capability, burst MaxUint32 bits)."""
    example = json.loads((Path(__file__).resolve().parent.parent / "conf-examples/bandwidth-kubelet.conflist")
                         .read_text())
    bridge = dict(example["plugins"][0], bridge="cbw" + unique("", 8)[-8:])
    bridge["ipam"] = dict(bridge["ipam"], dataDir=str(tmp_path / "leases"))
    bridge.pop("ipMasq")
    common = {"cniVersion": example["cniVersion"], "name": world.network}
    netns = world.factory_container.path
    wrapper = ("ip", "netns", "exec", world.host.name)
    add = run_plugin("bridge", "ADD", dict(common, **bridge), netns=netns, wrapper=wrapper)
    assert add.ok, str(add)
    shaped = dict(common, type="bandwidth", prevResult=add.json,
                  runtimeConfig={"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 4294967295,
                                               "egressRate": 10_000_000, "egressBurst": 4294967295}})
    run = run_plugin("bandwidth", "ADD", shaped, netns=netns, wrapper=wrapper)
    assert run.ok, str(run)
    host_veth = next(i["name"] for i in add.json["interfaces"] if i["name"].startswith("veth"))
    assert tbf(world.qdiscs(host_veth))["rate"] == 1_250_000
    assert tbf(world.qdiscs(world.ifb()))["rate"] == 1_250_000
    assert run_plugin("bandwidth", "DEL", shaped, netns=netns, wrapper=wrapper).ok
    assert run_plugin("bridge", "DEL", dict(common, **bridge), netns=netns, wrapper=wrapper).ok
    assert world.ifb() not in world.links()


def test_gc_removes_the_tagged_ifb_of_an_attachment_no_longer_valid(world):
    # A second attachment of the container, on its own veth.
    second = "vbx" + unique("", 8)[-8:]
    world.host.run("ip", "link", "add", second, "type", "veth", "peer", "name", "eth1", "netns", world.container.name)
    world.host.run("ip", "link", "set", second, "up")
    assert world.run("ADD", world.config(**LIMITS)).ok
    conf2 = world.config(**LIMITS)
    conf2["prevResult"]["interfaces"] = [{"name": second}, {"name": "eth1", "sandbox": world.container.path}]
    add2 = run_plugin("bandwidth", "ADD", conf2, netns=world.container.path, containerid="ctr2", ifname="eth1",
                      wrapper=("ip", "netns", "exec", world.host.name))
    assert add2.ok, str(add2)
    links = world.links()
    assert links[world.ifb("ctr1")].get("ifalias") == f"cni-bandwidth {world.network} ctr1 eth0"
    assert links[world.ifb("ctr2")].get("ifalias") == f"cni-bandwidth {world.network} ctr2 eth1"
    # Another network's ifb and an untagged one (as the reference makes them) are not ours to judge.
    world.host.run("ip", "link", "add", "bwpforeign0001", "type", "ifb")
    world.host.run("ip", "link", "set", "bwpforeign0001", "alias", "cni-bandwidth othernet ctr2 eth1")
    world.host.run("ip", "link", "add", "bwpuntagged001", "type", "ifb")

    gc = {"cniVersion": "1.1.0", "name": world.network, "type": "bandwidth",
          "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]}
    run = run_plugin("bandwidth", "GC", gc, wrapper=("ip", "netns", "exec", world.host.name))
    assert run.ok, str(run)
    links = world.links()
    assert world.ifb("ctr2") not in links, "ctr2/eth1 is no longer valid: its ifb goes"
    assert world.ifb("ctr1") in links and "bwpforeign0001" in links and "bwpuntagged001" in links
    assert run_plugin("bandwidth", "GC", gc, wrapper=("ip", "netns", "exec", world.host.name)).ok
    assert world.run("DEL", world.config()).ok
    assert world.ifb("ctr1") not in world.links()
