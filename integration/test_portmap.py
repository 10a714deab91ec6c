"""portmap: real traffic through published ports, interop with the reference, nothing leaked.

Each test has its own namespaces: `host` (where bridge and portmap run and every rule lives),
containers on the bridge (10.77.0.0/24, 2001:db8:77::/64), and `outside`, a client joined to the
host by a veth (10.88.0.0/24, 2001:db8:88::/64). Traffic only ever flows between them.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import time

import pytest

from cnitest import REF_DIR, run_plugin, sh, unique
from test_bridge_support import World, nat_rules, run_in

HOST4, HOST6 = "10.88.0.1", "2001:db8:88::1"

# A one-shot server per protocol: answers every connection or datagram with its name and the
# peer it saw, until killed.
SERVER = r"""
import socket, sys
family = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(sys.argv[3])))
print("ready", flush=True)
if kind == socket.SOCK_STREAM:
    s.listen(8)
    while True:
        c, peer = s.accept()
        c.sendall(("%s %s" % (sys.argv[4], peer[0])).encode())
        c.close()
else:
    while True:
        data, peer = s.recvfrom(100)
        s.sendto(("%s %s" % (sys.argv[4], peer[0])).encode(), peer)
"""

CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[5]))
if int(sys.argv[4]):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sys.argv[4])))
try:
    if proto == "tcp":
        s.connect((host, port))
        print(s.recv(100).decode())
    else:
        s.sendto(b"hi", (host, port))
        print(s.recvfrom(100)[0].decode())
except OSError as error:
    print("FAILED", type(error).__name__)
"""


class PortmapWorld(World):
    def __init__(self, factory, tmp_path):
        super().__init__(factory, tmp_path)
        self.servers = []
        self.outside = factory("swo")
        veth_host, veth_out = unique("vh", 12), unique("vo", 12)
        sh("ip", "-n", self.host.name, "link", "add", veth_host, "type", "veth", "peer", "name", veth_out,
           "netns", self.outside.name)
        for ns, name, v4, v6 in ((self.host, veth_host, HOST4, HOST6), (self.outside, veth_out, "10.88.0.2",
                                                                       "2001:db8:88::2")):
            sh("ip", "-n", ns.name, "addr", "add", f"{v4}/24", "dev", name)
            sh("ip", "-n", ns.name, "addr", "add", f"{v6}/64", "dev", name, "nodad")
            sh("ip", "-n", ns.name, "link", "set", name, "up")
        sh("ip", "-n", self.outside.name, "route", "add", "default", "via", HOST4)
        sh("ip", "-n", self.outside.name, "-6", "route", "add", "default", "via", HOST6)

    def bridge_config(self):
        config = self.config(subnet=["10.77.0.0/24", "2001:db8:77::/64"], isGateway=True)
        config["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        return config

    def portmap_config(self, result, mappings, version="1.0.0", **keys):
        config = {"cniVersion": version, "name": self.network, "type": "portmap",
                  "runtimeConfig": {"portMappings": mappings}, **keys}
        if result is not None:
            config["prevResult"] = result
        return config

    def publish(self, mappings, plugin_dir=None, containerid="ctr1", **keys):
        """bridge ADD then portmap ADD for a new container; returns (container, bridge result)."""
        container = self.container()
        result = self.add(self.bridge_config(), container, containerid=containerid)
        run = self.portmap("ADD", self.portmap_config(result, mappings, **keys), container,
                           containerid=containerid, bin_dir=plugin_dir)
        assert run.ok, str(run)
        assert run.json["ips"] == result["ips"], "prevResult is passed through"
        return container, result

    def portmap(self, command, config, container, containerid="ctr1", bin_dir=None):
        return run_in(self.host, "portmap", command, config, netns=container.path if container else "",
                      containerid=containerid, bin_dir=bin_dir)

    def serve(self, container, proto, family, port, name):
        proc = subprocess.Popen(["ip", "netns", "exec", container.name, "python3", "-c", SERVER, proto, family,
                                 str(port), name], stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def ask(self, ns, proto, host, port, source_port=0, timeout=None):
        # IPv6 gets longer: the bridge's new gateway address is tentative (DAD) for a second or
        # two, and the container's replies wait for it.
        timeout = timeout or (6.0 if ":" in host else 2.0)
        return sh("ip", "netns", "exec", ns.name, "python3", "-c", CLIENT, proto, host, port, source_port,
                  timeout).strip()

    def close(self):
        for proc in self.servers:
            proc.kill()
            proc.wait()


@pytest.fixture
def pw(netns_factory, tmp_path):
    world = PortmapWorld(netns_factory, tmp_path)
    yield world
    world.close()


def dn_rules(world):
    return [line for line in nat_rules(world.host) if "CNI-DN-" in line]


def address(result, family):
    return next(ip["address"].split("/")[0] for ip in result["ips"] if (":" in ip["address"]) == (family == 6))


# ---------------------------------------------------------------------------------------------
# Traffic


def nft_portmap_comments(world):
    out = world.host.run("nft", "-j", "list", "ruleset", check=False)
    items = json.loads(out).get("nftables", []) if out.strip() else []
    rules = [i["rule"] for i in items if "rule" in i and i["rule"].get("table") == "cni_hostport"]
    return [r["comment"] for r in rules if r.get("comment")]


@pytest.mark.parametrize("backend", [None, "nftables"])
def test_tcp_and_udp_both_families_from_outside_and_localhost(pw, backend):
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"HostPort": 8081, "ContainerPort": 81, "Protocol": "udp"}]  # containerd's spelling
    keys = {"backend": backend} if backend else {}
    container, result = pw.publish(mappings, **keys)
    if backend == "nftables":
        assert dn_rules(pw) == [] and nft_portmap_comments(pw).count("ctr1") == 7
    else:
        assert nft_portmap_comments(pw) == [] and len([r for r in dn_rules(pw) if r.startswith("-A CNI-DN-")]) == 10
    for family in ("4", "6"):
        pw.serve(container, "tcp", family, 80, "web")
        pw.serve(container, "udp", family, 81, "dns")
    assert pw.ask(pw.outside, "tcp", HOST4, 8080) == "web 10.88.0.2", "outside, no masquerade"
    assert pw.ask(pw.outside, "udp", HOST4, 8081) == "dns 10.88.0.2"
    assert pw.ask(pw.outside, "tcp", HOST6, 8080) == "web 2001:db8:88::2"
    assert pw.ask(pw.outside, "udp", HOST6, 8081) == "dns 2001:db8:88::2"
    # From the host itself: to its own address, and to 127.0.0.1 (route_localnet + masquerade).
    assert pw.ask(pw.host, "tcp", HOST4, 8080).startswith("web ")
    assert pw.ask(pw.host, "tcp", "127.0.0.1", 8080) == "web 10.77.0.1", "localhost is masqueraded"
    assert pw.ask(pw.host, "udp", "127.0.0.1", 8081) == "dns 10.77.0.1"
    bridge = pw.bridge
    assert pw.host.run("cat", f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").strip() == "1"
    # Another container on the bridge reaches the published port through the host's address.
    other = pw.container()
    pw.add(pw.bridge_config(), other, containerid="ctr2")
    # iptables masquerades the whole subnet's hairpin; nftables only the container's own address
    # (the reference's layouts), the other container's replies are un-DNATed by br_netfilter.
    hairpin = "web 10.77.0.1" if backend is None else "web 10.77.0.3"
    assert pw.ask(other, "tcp", HOST4, 8080) == hairpin
    assert pw.ask(pw.outside, "tcp", HOST4, 8079, timeout=1).startswith("FAILED"), "unmapped port"

    assert pw.portmap("CHECK", pw.portmap_config(result, mappings, **keys), container).ok
    assert pw.portmap("DEL", pw.portmap_config(None, mappings), container).ok
    assert dn_rules(pw) == [] and nft_portmap_comments(pw) == []
    assert pw.ask(pw.outside, "tcp", HOST4, 8080, timeout=1).startswith("FAILED")


def test_host_ip_limits_the_mapping_to_that_address(pw):
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": HOST4},
                {"hostPort": 8082, "containerPort": 80, "protocol": "tcp", "hostIP": HOST6}]
    container, result = pw.publish(mappings)
    pw.serve(container, "tcp", "4", 80, "web")
    pw.serve(container, "tcp", "6", 80, "web6")
    assert pw.ask(pw.outside, "tcp", HOST4, 8080) == "web 10.88.0.2"
    assert pw.ask(pw.outside, "tcp", "10.77.0.1", 8080, timeout=1).startswith("FAILED"), "another host address"
    assert pw.ask(pw.outside, "tcp", HOST6, 8082) == "web6 2001:db8:88::2"
    assert pw.ask(pw.outside, "tcp", HOST6, 8080, timeout=1).startswith("FAILED"), "v4 hostIP: not in ip6tables"
    v6 = [r for r in pw.host.run("ip6tables-save", "-t", "nat").splitlines() if "DNAT --to" in r]
    assert len(v6) == 1 and f"-d {HOST6}/128" in v6[0]
    assert pw.portmap("DEL", pw.portmap_config(None, []), container).ok, "DEL without mappings still cleans"
    assert dn_rules(pw) == []


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_udp_port_remapped_to_a_new_container_is_not_stale(pw, backend):
    """The same client 5-tuple reaches the new container: ADD deleted the old conntrack entry."""
    mappings = [{"hostPort": 9053, "containerPort": 53, "protocol": "udp"}]
    first, _ = pw.publish(mappings, containerid="old", backend=backend)
    pw.serve(first, "udp", "4", 53, "old")
    assert pw.ask(pw.outside, "udp", HOST4, 9053, source_port=40000) == "old 10.88.0.2"
    assert pw.portmap("DEL", pw.portmap_config(None, mappings), first, containerid="old").ok
    second, _ = pw.publish(mappings, containerid="new", backend=backend)
    pw.serve(second, "udp", "4", 53, "new")
    assert pw.ask(pw.outside, "udp", HOST4, 9053, source_port=40000) == "new 10.88.0.2"


def test_snat_false_and_masq_all(pw):
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    container, result = pw.publish(mappings, snat=False)
    assert not [r for r in nat_rules(pw.host) if "SETMARK" in r], "no mark rules without snat"
    pw.serve(container, "tcp", "4", 80, "web")
    assert pw.ask(pw.outside, "tcp", HOST4, 8080) == "web 10.88.0.2"
    assert pw.portmap("ADD", pw.portmap_config(result, mappings, masqAll=True), container).ok, "re-ADD"
    rules = dn_rules(pw)
    assert [r for r in rules if "SETMARK" in r and "-s " not in r], "masqAll marks every source"
    assert pw.ask(pw.outside, "tcp", HOST4, 8080) == "web 10.77.0.1", "masqAll masquerades outside clients"
    assert len([r for r in rules if "DNAT --to" in r]) == 2, "re-ADD replaced, did not duplicate"


# ---------------------------------------------------------------------------------------------
# Interop with the reference


@pytest.mark.skipif(not (REF_DIR / "portmap").exists(), reason="reference portmap not installed")
@pytest.mark.parametrize("adder", ["ours", "reference"])
def test_either_removes_the_others_rules(pw, adder):
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8081, "containerPort": 81, "protocol": "udp"}]
    ours, ref = None, str(REF_DIR)
    container, result = pw.publish(mappings, plugin_dir=ref if adder == "reference" else ours)
    pw.serve(container, "tcp", "4", 80, "web")
    assert pw.ask(pw.outside, "tcp", HOST4, 8080) == "web 10.88.0.2"
    written = sorted(nat_rules(pw.host))
    if adder == "reference":
        # What the reference wrote is exactly what we write: CHECK passes, our ADD changes nothing.
        assert pw.portmap("CHECK", pw.portmap_config(result, mappings), container).ok
        assert pw.portmap("ADD", pw.portmap_config(result, mappings), container).ok
        assert sorted(nat_rules(pw.host)) == written, "our re-ADD over the reference's rules"
    deleter = ours if adder == "reference" else ref
    run = pw.portmap("DEL", pw.portmap_config(None, mappings), container, bin_dir=deleter)
    assert run.ok, str(run)
    assert dn_rules(pw) == [], "the other's DEL left rules"
    assert pw.ask(pw.outside, "tcp", HOST4, 8080, timeout=1).startswith("FAILED")


# ---------------------------------------------------------------------------------------------
# Failure and exec counts


def test_kill_during_add_then_del_leaves_nothing(pw):
    mappings = [{"hostPort": 8080 + i, "containerPort": 80, "protocol": "tcp"} for i in range(3)]
    container = pw.container()
    result = pw.add(pw.bridge_config(), container)
    config = json.dumps(pw.portmap_config(result, mappings)).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": container.path, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")}
    from cnitest import BIN_DIR
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04):
        proc = subprocess.Popen(["ip", "netns", "exec", pw.host.name, str(BIN_DIR / "portmap")], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.stdin.write(config)
        proc.stdin.close()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert pw.portmap("DEL", pw.portmap_config(None, []), container).ok
        assert dn_rules(pw) == [], f"left after a kill at {delay}s"


def traced_programs(pw, tmp_path, command, config, container):
    log = tmp_path / unique("execs", 16)
    run = run_plugin("portmap", command, config, netns=container.path,
                     wrapper=("ip", "netns", "exec", pw.host.name, "strace", "-f", "-qq", "-e", "trace=execve",
                              "-e", "signal=none", "-o", str(log)))
    assert run.ok, str(run)
    programs = [m.group(1) for line in log.read_text().splitlines() if "= -1" not in line
                for m in [re.search(r'execve\("([^"]+)"', line)] if m]
    return [os.path.basename(p) for p in programs[1:]]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_programs_run_per_add_and_del(pw, tmp_path, backend):
    """iptables: one restore per family (iptables-nft's tables are read over netlink), and only
    a re-ADD lists first; nftables: nothing (netlink). A DEL with nothing left runs nothing."""
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8081, "containerPort": 81, "protocol": "udp"}]
    container = pw.container()
    result = pw.add(pw.bridge_config(), container)
    config = pw.portmap_config(result, mappings, backend=backend)
    listed = ["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"]
    expected = ["iptables-restore", "ip6tables-restore"]
    if backend == "nftables":
        listed = expected = []
    assert traced_programs(pw, tmp_path, "ADD", config, container) == expected
    assert traced_programs(pw, tmp_path, "ADD", config, container) == listed, "a re-ADD"
    assert traced_programs(pw, tmp_path, "CHECK", config, container) == [p for p in listed if "save" in p]
    assert traced_programs(pw, tmp_path, "DEL", config, container) == expected
    assert traced_programs(pw, tmp_path, "ADD", config, container) == expected
    without_mappings = pw.portmap_config(None, [], backend=backend)
    assert traced_programs(pw, tmp_path, "DEL", without_mappings, container) == listed, "DEL lists to find them"
    assert dn_rules(pw) == [] and nft_portmap_comments(pw) == []
    assert traced_programs(pw, tmp_path, "DEL", config, container) == []


def test_check_after_tampering_and_gc(pw):
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    container, result = pw.publish(mappings, containerid="keep")
    other, other_result = pw.publish(mappings, containerid="stale")
    chain = ("CNI-DN-" + hashlib.sha512((pw.network + "stale").encode()).hexdigest())[:28]
    assert any(chain in r for r in dn_rules(pw)), "the reference's chain name"
    pw.host.run("iptables", "-t", "nat", "-F", chain)
    checks = [pw.portmap("CHECK", pw.portmap_config(r, mappings), c, containerid=cid)
              for c, r, cid in ((container, result, "keep"), (other, other_result, "stale"))]
    assert [run.ok for run in checks] == [True, False]
    failed = next(run for run in checks if not run.ok)
    assert failed.error_code() == 105 and "not found" in failed.json["msg"]
    gc = {"cniVersion": "1.1.0", "name": pw.network, "type": "portmap",
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert pw.portmap("GC", gc, None).ok
    assert pw.portmap("CHECK", pw.portmap_config(result, mappings), container, containerid="keep").ok
    remaining = " ".join(nat_rules(pw.host))
    assert 'id: \\"stale\\"' not in remaining and 'id: \\"keep\\"' in remaining
    status = {"cniVersion": "1.1.0", "name": pw.network, "type": "portmap"}
    assert pw.portmap("STATUS", status, None).ok


PORTMAP_RECORDS = "/run/cni/portmap/.swift-cni-attachments"


def hostport_comments(world):
    out = world.host.run("nft", "-j", "list", "table", "ip", "cni_hostport", check=False)
    items = json.loads(out).get("nftables", []) if out.strip() else []
    return sorted(i["rule"]["comment"] for i in items if "rule" in i and i["rule"].get("comment"))


def test_nftables_gc_removes_only_this_networks_unlisted_attachments(pw):
    """nftables rules carry only the container ID: GC of one network removes the rules of the
    attachments ADD recorded for it that are not listed, never another network's."""
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    other_network = unique("pmgc", 12)
    try:
        keep, keep_result = pw.publish(mappings, containerid="keep", backend="nftables")
        stale, stale_result = pw.publish(mappings, containerid="stale", backend="nftables")
        # A third container whose portmap ADD is on another network, in the same host namespace.
        elsewhere = pw.container()
        elsewhere_result = pw.add(pw.bridge_config(), elsewhere, containerid="elsewhere")
        other = dict(pw.portmap_config(elsewhere_result, [{"hostPort": 9090, "containerPort": 90,
                                                            "protocol": "tcp"}], backend="nftables"),
                     name=other_network)
        assert pw.portmap("ADD", other, elsewhere, containerid="elsewhere").ok
        # Each attachment: one dnat and two masquerade rules in the ip table.
        assert hostport_comments(pw) == ["elsewhere"] * 3 + ["keep"] * 3 + ["stale"] * 3
        assert sorted(os.listdir(f"{PORTMAP_RECORDS}/{pw.network}")) == ["keep=eth0", "stale=eth0"]
        assert os.listdir(f"{PORTMAP_RECORDS}/{other_network}") == ["elsewhere=eth0"]

        gc = {"cniVersion": "1.1.0", "name": pw.network, "type": "portmap",
              "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
        run = pw.portmap("GC", gc, None)
        assert run.ok, str(run)
        assert hostport_comments(pw) == ["elsewhere"] * 3 + ["keep"] * 3
        assert os.listdir(f"{PORTMAP_RECORDS}/{pw.network}") == ["keep=eth0"]
        assert os.listdir(f"{PORTMAP_RECORDS}/{other_network}") == ["elsewhere=eth0"]
        assert pw.portmap("CHECK", pw.portmap_config(keep_result, mappings, backend="nftables"), keep,
                          containerid="keep").ok

        # DEL after GC: of the collected one (nothing left), then of the others.
        for config, container, cid in ((pw.portmap_config(stale_result, mappings), stale, "stale"),
                                       (pw.portmap_config(keep_result, mappings), keep, "keep"),
                                       (other, elsewhere, "elsewhere")):
            run = pw.portmap("DEL", config, container, containerid=cid)
            assert run.ok, str(run)
        assert hostport_comments(pw) == []
        assert os.listdir(f"{PORTMAP_RECORDS}/{pw.network}") == []
        assert os.listdir(f"{PORTMAP_RECORDS}/{other_network}") == []
    finally:
        for network in (pw.network, other_network):
            subprocess.run(["rm", "-rf", f"{PORTMAP_RECORDS}/{network}"], check=False)


def hostport_skeleton(world):
    """(chain, handle, expressions) of every rule of the ip table's chains that no container owns."""
    listing = json.loads(world.host.run("nft", "-j", "-a", "list", "table", "ip", "cni_hostport"))
    return [(i["rule"]["chain"], i["rule"]["handle"], json.dumps(i["rule"]["expr"], sort_keys=True))
            for i in listing["nftables"] if "rule" in i and i["rule"]["chain"] in ("hostports_all", "prerouting",
                                                                                  "output")]


def test_nftables_add_rewrites_the_skeleton_only_when_needed(pw):
    """A later nftables ADD finds the table's chains and the rules of hostports_all, prerouting
    and output as it would write them, and adds only its own rules: the skeleton keeps its rule
    handles (not flushed and re-added, which leaves the kernel destroy work our socket's close
    waits for). A tampered entry chain is rewritten as before, and traffic still flows."""
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    first, first_result = pw.publish(mappings, containerid="one", backend="nftables")
    skeleton = hostport_skeleton(pw)
    assert [chain for chain, _, _ in skeleton] == ["hostports_all", "hostports_all", "prerouting", "output"]
    second, second_result = pw.publish([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}],
                                       containerid="two", backend="nftables")
    assert hostport_skeleton(pw) == skeleton
    assert hostport_comments(pw) == ["one"] * 3 + ["two"] * 3

    output_rule = next(handle for chain, handle, _ in skeleton if chain == "output")
    pw.host.run("nft", "delete", "rule", "ip", "cni_hostport", "output", "handle", str(output_rule))
    third, third_result = pw.publish([{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}],
                                     containerid="three", backend="nftables")
    repaired = hostport_skeleton(pw)
    assert [(chain, text) for chain, _, text in repaired] == [(chain, text) for chain, _, text in skeleton]
    assert {handle for _, handle, _ in repaired}.isdisjoint(handle for _, handle, _ in skeleton)

    pw.serve(second, "tcp", "4", 80, "two")
    pw.serve(third, "tcp", "4", 80, "three")
    assert pw.ask(pw.outside, "tcp", HOST4, 8081).startswith("two "), "a mapping added over the kept skeleton"
    assert pw.ask(pw.outside, "tcp", HOST4, 8082).startswith("three "), "and over the repaired one"
    for container, result, cid, ports in ((first, first_result, "one", mappings),
                                          (second, second_result, "two", None),
                                          (third, third_result, "three", None)):
        config = pw.portmap_config(result, ports or [], backend="nftables")
        assert pw.portmap("DEL", config, container, containerid=cid).ok
    assert hostport_comments(pw) == []


def test_failed_add_leaves_no_rule(pw):
    """A mark chain that does not exist fails the iptables transaction: the shared chains of the
    same transaction are not left either, and the error is the firewall's (code 104)."""
    container = pw.container()
    result = pw.add(pw.bridge_config(), container)
    config = pw.portmap_config(result, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                               externalSetMarkChain="NO-SUCH-CHAIN")
    run = pw.portmap("ADD", config, container)
    assert not run.ok and run.error_code() == 104, str(run)
    assert nat_rules(pw.host) == [], "a rule was left behind"
