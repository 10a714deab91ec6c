"""firewall: the reference's rules exactly, real traffic through them, interop with the reference.

Each test has its own `host` namespace (where bridge and firewall run and every rule lives) and
containers on one or two bridges of it (10.77.0.0/24 + 2001:db8:77::/64, 10.78.0.0/24). Traffic
only ever flows between these namespaces. The kernel state is read independently with
iptables-save / ip6tables-save.
"""

import json
import os
import shutil
import subprocess

import pytest

from cnitest import BIN_DIR, REF_DIR, REPO, unique
from test_bridge_support import World, run_in

RECORDS = "/run/cni/firewall"
# The networks of the running test, whose attachment records go even when the test fails.
NETWORKS = []


@pytest.fixture(autouse=True)
def remove_records():
    yield
    while NETWORKS:
        shutil.rmtree(f"{RECORDS}/{NETWORKS.pop()}", ignore_errors=True)


class Net(World):
    """One bridge network on a (possibly shared) host namespace."""

    def __init__(self, factory, tmp_path, host=None, subnet4="10.77.0.0/24", subnet6="2001:db8:77::/64"):
        super().__init__(factory, tmp_path)
        if host is not None:
            subprocess.run(["ip", "netns", "del", self.host.name], capture_output=True)
            self.host = host
        self.subnets = [s for s in (subnet4, subnet6) if s]
        NETWORKS.append(self.network)

    def bridge_config(self):
        config = self.config(subnet=self.subnets, isGateway=True)
        config["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if len(self.subnets) > 1 else [])
        return config

    def firewall_config(self, result=None, **keys):
        config = {"cniVersion": "1.0.0", "name": self.network, "type": "firewall", **keys}
        if result is not None:
            config["prevResult"] = result
        return config

    def attach(self, containerid, plugin_dir=None, **keys):
        """bridge ADD then firewall ADD; returns (container, bridge result)."""
        container = self.container()
        result = self.add(self.bridge_config(), container, containerid=containerid)
        run = self.firewall("ADD", self.firewall_config(result, **keys), container, containerid, plugin_dir)
        assert run.ok, str(run)
        assert run.json["ips"] == result["ips"], "prevResult is passed through"
        return container, result

    def firewall(self, command, config, container, containerid, bin_dir=None):
        return run_in(self.host, "firewall", command, config, netns=container.path if container else "",
                      containerid=containerid, bin_dir=bin_dir)


@pytest.fixture
def net(netns_factory, tmp_path):
    return Net(netns_factory, tmp_path)


def filter_rules(ns, ipv6=False):
    """The filter table's chain declarations and rules that mention CNI, as iptables-save prints them."""
    out = ns.run("ip6tables-save" if ipv6 else "iptables-save", "-t", "filter", check=False)
    lines = []
    for line in out.splitlines():
        if "CNI-" not in line:
            continue
        lines.append(line.split(" ")[0] if line.startswith(":") else line)
    return lines


def address(result, family):
    return next(ip["address"].split("/")[0] for ip in result["ips"] if (":" in ip["address"]) == (family == 6))


def reaches(source, destination, count=1, wait=1):
    proc = subprocess.run(["ip", "netns", "exec", source.name, "ping", "-n", "-q", "-c", str(count), "-W", str(wait),
                           destination], capture_output=True)
    return proc.returncode == 0


def per_ip(result):
    rules = []
    for ip in result["ips"]:
        host = ip["address"].split("/")[0] + ("/128" if ":" in ip["address"] else "/32")
        rules.append(f"-A CNI-FORWARD -d {host} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        rules.append(f"-A CNI-FORWARD -s {host} -j ACCEPT")
    return rules


SHARED = [
    ":CNI-ADMIN",
    ":CNI-FORWARD",
    '-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD',
    '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN',
]


def test_add_writes_the_reference_rules_check_and_del_clean(net):
    container, result = net.attach("ctr1")
    v4 = [ip for ip in result["ips"] if ":" not in ip["address"]]
    v6 = [ip for ip in result["ips"] if ":" in ip["address"]]
    assert filter_rules(net.host) == SHARED + per_ip({"ips": v4})
    assert filter_rules(net.host, ipv6=True) == SHARED + per_ip({"ips": v6})
    # A second ADD (a runtime retry) adds nothing twice.
    assert net.firewall("ADD", net.firewall_config(result), container, "ctr1").ok
    assert filter_rules(net.host) == SHARED + per_ip({"ips": v4})

    check = net.firewall("CHECK", net.firewall_config(result), container, "ctr1")
    assert check.ok, str(check)
    net.host.run("iptables", "-D", "CNI-FORWARD", "-s", address(result, 4) + "/32", "-j", "ACCEPT")
    check = net.firewall("CHECK", net.firewall_config(result), container, "ctr1")
    assert check.error_code() == 105 and address(result, 4) in check.json["msg"], str(check)

    assert net.firewall("DEL", net.firewall_config(result), container, "ctr1").ok
    assert filter_rules(net.host) == SHARED, "per-address rules gone, chains and jumps stay (as the reference)"
    assert filter_rules(net.host, ipv6=True) == SHARED
    assert not os.path.exists(f"{RECORDS}/{net.network}"), "the attachment record is gone"
    assert net.firewall("DEL", net.firewall_config(result), container, "ctr1").ok, "DEL is idempotent"


def test_del_without_prev_result_removes_the_rules_the_reference_would_leak(net):
    container, result = net.attach("ctr1")
    assert len(filter_rules(net.host)) == len(SHARED) + 2
    run = net.firewall("DEL", net.firewall_config(), None, "ctr1")
    assert run.ok, str(run)
    assert filter_rules(net.host) == SHARED and filter_rules(net.host, ipv6=True) == SHARED

    # The reference cannot: its DEL without prevResult leaves the anonymous rules (the gap we close).
    other = net.container()
    second = net.add(net.bridge_config(), other, containerid="ctr2")
    assert run_in(net.host, REF_DIR / "firewall", "ADD", net.firewall_config(second), netns=other.path,
                  containerid="ctr2").ok
    assert run_in(net.host, REF_DIR / "firewall", "DEL", net.firewall_config(), netns=other.path,
                  containerid="ctr2").ok
    assert len(filter_rules(net.host)) == len(SHARED) + 2, "the reference leaked them"


def test_gc_removes_rules_of_attachments_not_listed(net):
    _, kept = net.attach("keep1")
    _, gone = net.attach("gone1")
    config = net.firewall_config(cniVersion="1.1.0")
    config["cni.dev/valid-attachments"] = [{"containerID": "keep1", "ifname": "eth0"}]
    run = run_in(net.host, "firewall", "GC", config, raw_env={"CNI_COMMAND": "GC", "CNI_PATH": "/nonexistent"})
    assert run.ok, str(run)
    v4 = [ip for ip in kept["ips"] if ":" not in ip["address"]]
    assert filter_rules(net.host) == SHARED + per_ip({"ips": v4})
    assert address(gone, 6) not in " ".join(filter_rules(net.host, ipv6=True))
    assert net.firewall("DEL", net.firewall_config(), None, "keep1").ok


def test_forward_policy_drop_lets_containers_out_and_replies_in_only(netns_factory, tmp_path):
    a = Net(netns_factory, tmp_path, subnet6=None)
    b = Net(netns_factory, tmp_path, host=a.host, subnet4="10.78.0.0/24", subnet6=None)
    container_a, result_a = a.container(), None
    result_a = a.add(a.bridge_config(), container_a, containerid="a1")
    container_b = b.container()
    result_b = b.add(b.bridge_config(), container_b, containerid="b1")
    a.host.run("iptables", "-P", "FORWARD", "DROP")
    assert not reaches(container_a, address(result_b, 4)), "FORWARD DROP blocks everything before firewall"

    assert a.firewall("ADD", a.firewall_config(result_a), container_a, "a1").ok
    assert reaches(container_a, address(result_b, 4)), "a1 out (-s a1), the reply in (-d a1 ESTABLISHED)"
    assert not reaches(container_b, address(result_a, 4)), "new connections to a1 from elsewhere stay blocked"

    assert a.firewall("DEL", a.firewall_config(result_a), container_a, "a1").ok
    assert not reaches(container_a, address(result_b, 4)), "DEL took the rules away"


def isolated_bridges(netns_factory, tmp_path, policy, firewall_config):
    """Two networks on one host (bridges a and b; containers a1, a2 on a, b1 on b) that first
    reach each other, then the firewall's ADD with `ingressPolicy` for each container
    (`firewall_config(net, result, **keys)` makes its config), and the traffic that policy
    leaves checked. Returns (a, b, attached): attached is [(net, container, result, cid)]."""
    a = Net(netns_factory, tmp_path, subnet6=None)
    b = Net(netns_factory, tmp_path, host=a.host, subnet4="10.78.0.0/24", subnet6=None)
    # Bridged traffic meets the firewall's hooks only with br_netfilter's call-iptables (per namespace).
    a.host.run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
    a1, a2, b1 = a.container(), a.container(), b.container()
    ra1 = a.add(a.bridge_config(), a1, containerid="a1")
    ra2 = a.add(a.bridge_config(), a2, containerid="a2")
    rb1 = b.add(b.bridge_config(), b1, containerid="b1")
    assert reaches(a1, address(rb1, 4)) and reaches(b1, address(ra1, 4)), "routed between bridges before"
    assert reaches(a1, address(ra2, 4)), "and within the bridge"

    attached = [(a, a1, ra1, "a1"), (a, a2, ra2, "a2"), (b, b1, rb1, "b1")]
    for net, container, result, cid in attached:
        run = net.firewall("ADD", firewall_config(net, result, ingressPolicy=policy), container, cid)
        assert run.ok, str(run)

    assert not reaches(a1, address(rb1, 4)), "a1 cannot reach the other network"
    assert not reaches(b1, address(ra1, 4)), "nor b1 this one"
    assert reaches(a1, "10.77.0.1") and reaches(b1, "10.78.0.1"), "each reaches its gateway (the host)"
    assert reaches(a1, address(ra2, 4)) == (policy == "same-bridge"), "within the bridge: only same-bridge"
    return a, b, attached


@pytest.mark.parametrize("policy", ["same-bridge", "isolated"])
def test_ingress_policy_isolates_bridges(netns_factory, tmp_path, policy):
    a, b, attached = isolated_bridges(
        netns_factory, tmp_path, policy, lambda net, result, **keys: net.firewall_config(result, **keys))
    comment = f'"CNI firewall plugin rules (ingressPolicy: {policy})"'
    rules = filter_rules(a.host)
    assert rules.count('-A FORWARD -m comment --comment "CNI firewall plugin rules (ingressPolicy: '
                       'same-bridge|isolated)" -j CNI-ISOLATION-STAGE-1') == 1
    assert rules.index(next(r for r in rules if r.endswith("-j CNI-ISOLATION-STAGE-1"))) < \
        rules.index('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD')
    for bridge in (a.bridge, b.bridge):
        assert f"-A CNI-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -m comment --comment {comment} " \
               f"-j CNI-ISOLATION-STAGE-2" in rules
        assert (f"-A CNI-ISOLATION-STAGE-1 -i {bridge} -o {bridge} -m comment --comment {comment} -j DROP"
                in rules) == (policy == "isolated")
        assert f'-A CNI-ISOLATION-STAGE-2 -o {bridge} -m comment --comment "CNI firewall plugin rules ' \
               f'(ingressPolicy: same-bridge|isolated)" -j DROP' in rules
    assert rules[-1].endswith("-j RETURN") and rules[-1].startswith("-A CNI-ISOLATION-STAGE-2")
    for net, container, result, cid in attached:
        assert net.firewall("DEL", net.firewall_config(result, ingressPolicy=policy), container, cid).ok
    assert not os.path.exists(f"{RECORDS}/{a.network}") and not os.path.exists(f"{RECORDS}/{b.network}")


def test_mixed_with_the_reference_both_ways(net):
    ref = REF_DIR / "firewall"
    # The reference's ADD, our CHECK and DEL.
    c1 = net.container()
    r1 = net.add(net.bridge_config(), c1, containerid="ref1")
    assert run_in(net.host, ref, "ADD", net.firewall_config(r1, ingressPolicy="same-bridge"), netns=c1.path,
                  containerid="ref1").ok
    before = filter_rules(net.host)
    check = net.firewall("CHECK", net.firewall_config(r1), c1, "ref1")
    assert check.ok, str(check)
    # Our ADD over the reference's (1.1.1) isolation rules adds no second copy of them.
    c2 = net.container()
    r2 = net.add(net.bridge_config(), c2, containerid="ours2")
    assert net.firewall("ADD", net.firewall_config(r2, ingressPolicy="same-bridge"), c2, "ours2").ok
    added = per_ip({"ips": [ip for ip in r2["ips"] if ":" not in ip["address"]]})
    assert sorted(filter_rules(net.host)) == sorted(before + added)
    assert net.firewall("DEL", net.firewall_config(r1), c1, "ref1").ok
    assert address(r1, 4) not in " ".join(filter_rules(net.host))

    # Our ADD, the reference's CHECK and DEL.
    check = run_in(net.host, ref, "CHECK", net.firewall_config(r2), netns=c2.path, containerid="ours2")
    assert check.ok, str(check)
    assert run_in(net.host, ref, "DEL", net.firewall_config(r2), netns=c2.path, containerid="ours2").ok
    assert not any(address(r2, 4) in rule for rule in filter_rules(net.host))
    assert not any(address(r2, 6) in rule for rule in filter_rules(net.host, ipv6=True))
    # Our DEL after theirs: nothing left to remove, still success, the record goes.
    assert net.firewall("DEL", net.firewall_config(), c2, "ours2").ok
    assert not os.path.exists(f"{RECORDS}/{net.network}")


def test_a_custom_admin_chain_is_jumped_to_first(net):
    admin = unique("CNI-ADM-", 16)
    container, result = net.attach("ctr1", iptablesAdminChainName=admin)
    rules = filter_rules(net.host)
    assert f":{admin}" in rules
    first = next(r for r in rules if r.startswith("-A CNI-FORWARD"))
    assert first == f'-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j {admin}'
    assert net.firewall("DEL", net.firewall_config(result, iptablesAdminChainName=admin), container, "ctr1").ok


@pytest.mark.parametrize("name", ["firewall-isolated.conflist", "firewall-same-bridge.conflist"])
def test_conf_examples_work_as_given(net, name):
    """The example's chain, bridge name and dataDir made private, ADD in order and DEL in reverse."""
    example = json.loads((REPO / "conf-examples" / name).read_text())
    container = net.container()
    result = None
    plugins = example["plugins"]
    for plugin in plugins:
        if plugin["type"] == "bridge":
            plugin["bridge"] = net.bridge
            plugin["ipam"]["dataDir"] = net.data_dir
    configs = [dict(plugin, cniVersion=example["cniVersion"], name=net.network) for plugin in plugins]
    for config in configs:
        if result is not None:
            config["prevResult"] = result
        run = run_in(net.host, config["type"], "ADD", config, netns=container.path, containerid="ex1")
        assert run.ok, f"{config['type']}: {run}"
        result = run.json
    rules = filter_rules(net.host)
    assert '-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD' in rules
    assert any(f"-i {net.bridge} ! -o {net.bridge}" in rule for rule in rules)
    for config in reversed(configs):
        config["prevResult"] = result
        run = run_in(net.host, config["type"], "DEL", config, netns=container.path, containerid="ex1")
        assert run.ok, f"{config['type']}: {run}"
    assert not any(address(result, 4) in rule for rule in filter_rules(net.host))


def parallel_firewall_adds(net, count, firewall_config):
    """`count` containers on `net`'s bridge, then their firewall ADDs all started at once
    (`firewall_config(result)` makes each config), every one required to succeed. Returns
    [(container, result, cid)]."""
    attached = []
    for index in range(count):
        container = net.container()
        attached.append((container, net.add(net.bridge_config(), container, containerid=f"p{index}"), f"p{index}"))
    procs = []
    for container, result, cid in attached:
        config = json.dumps(firewall_config(result)).encode()
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": container.path,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
        proc = subprocess.Popen(["ip", "netns", "exec", net.host.name, str(BIN_DIR / "firewall")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        procs.append((proc, config))
    for proc, config in procs:
        proc.stdin.write(config)
        proc.stdin.close()
    outputs = [(proc.wait(timeout=60), proc.stdout.read()) for proc, _ in procs]
    assert all(status == 0 for status, _ in outputs), outputs
    return attached


def test_parallel_first_adds_on_a_fresh_host_make_the_shared_rules_once(net):
    """Eight containers' firewall ADDs at once on a host without any CNI chain: one transaction
    wins the chains, the others are recomputed from a fresh listing; nothing is doubled."""
    attached = parallel_firewall_adds(net, 8, net.firewall_config)
    expected = SHARED + [rule for _, result, _ in attached for rule in per_ip(
        {"ips": [ip for ip in result["ips"] if ":" not in ip["address"]]})]
    assert sorted(filter_rules(net.host)) == sorted(expected)
