"""bridge: ADD/DEL/CHECK/STATUS/GC exec'd as a runtime does, kernel state checked with ip/bridge/nft.

Every test runs the plugin inside a "host" namespace it created (see test_bridge_support.py), so
nothing reaches the real host. Reference test names (CNI-REFERENCE §3) are quoted where they map.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from cnitest import BIN_DIR, REF_DIR, run_plugin, sh, unique
from test_bridge_support import (World, addresses, bridge_ports, global_addresses, ipj, link, links, nat_rules,
                                 nft_comments, nft_rules, run_in, vlan_filtering_supported, with_prev, world)

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def assert_nothing_left(world, container, ifname="eth0", leases_before=()):
    assert world.host_veths() == [], "a host veth was left behind"
    if container is not None:
        assert link(container, ifname) is None, f"{ifname} was left in the container"
    assert world.leases() == sorted(leases_before), "a lease was left behind"
    assert nat_rules(world.host) == [], "an iptables rule was left behind"
    assert [c for c in nft_comments(world.host) if c] == [], "an nft rule was left behind"


# ---------------------------------------------------------------------------------------------
# ADD / DEL, per family ("configures and deconfigures a bridge and veth with default route")

def check_attachment(world, container, result, bridge_addresses, ifname="eth0"):
    interfaces = result["interfaces"]
    assert len(interfaces) == 3
    assert interfaces[0]["name"] == world.bridge
    assert interfaces[1]["name"].startswith("veth") and len(interfaces[1]["name"]) == 12
    assert interfaces[2] == {**interfaces[2], "name": ifname, "sandbox": container.path}
    assert all(MAC_RE.match(i["mac"]) for i in interfaces)
    assert interfaces[2]["mac"] != interfaces[0]["mac"]
    assert all(ip["interface"] == 2 for ip in result["ips"])

    bridge = link(world.host, world.bridge)
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert bridge["address"] == interfaces[0]["mac"], "result has the bridge's final MAC"
    host_veth = link(world.host, interfaces[1]["name"])
    assert host_veth["master"] == world.bridge
    assert host_veth["operstate"] == "UP"
    assert host_veth["address"] == interfaces[1]["mac"]
    peer = link(container, ifname)
    assert peer["linkinfo"]["info_kind"] == "veth" and peer["operstate"] == "UP"
    assert peer["address"] == interfaces[2]["mac"]
    assert sorted(global_addresses(world.host, world.bridge)) == sorted(bridge_addresses)
    assert sorted(global_addresses(container, ifname)) == sorted(ip["address"] for ip in result["ips"])


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_ipv4_add_check_del(world, version):
    container = world.container()
    config = world.config(version, isDefaultGateway=True)
    result = world.add(config, container)
    assert result["cniVersion"] == version
    assert result["ips"][0]["address"] == "10.77.0.2/24" and result["ips"][0]["gateway"] == "10.77.0.1"
    if version.startswith("0."):
        assert result["ips"][0]["version"] == "4"
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
    check_attachment(world, container, result, ["10.77.0.1/24"])
    # Kernel-visible details of the reference: broadcast on IPv4 addresses, routes with proto boot.
    assert ("10.77.0.2", 24, "10.77.0.255") in addresses(container, "eth0")
    default = ipj(container, "route", "show", "default", "proto", "boot")
    assert default and default[0]["gateway"] == "10.77.0.1"
    assert world.host.run("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert container.run("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").strip() == "1"
    assert world.leases() == ["10.77.0.2"]

    if version >= "0.4.0":
        check = world.run("CHECK", with_prev(config, result), container)
        assert check.ok, str(check)

    delete = world.run("DEL", with_prev(config, result), container)
    assert delete.ok, str(delete)
    assert link(container, "eth0") is None and world.host_veths() == []
    assert world.leases() == []
    assert link(world.host, world.bridge) is not None, "the bridge stays (as the reference's)"
    again = world.run("DEL", config, container)
    assert again.ok, f"repeated DEL must succeed: {again}"


def test_ipv6(world):
    container = world.container()
    config = world.config(subnet="2001:db8:77::/64", isDefaultGateway=True)
    result = world.add(config, container)
    assert result["ips"][0]["address"] == "2001:db8:77::2/64"
    assert result["routes"] == [{"dst": "::/0", "gw": "2001:db8:77::1"}]
    check_attachment(world, container, result, ["2001:db8:77::1/64"])
    assert container.run("sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").strip() == "0"
    assert container.run("sysctl", "-n", "net.ipv6.conf.eth0.keep_addr_on_down").strip() == "1"
    assert world.host.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").strip() == "1"
    # No DAD without enabledad: the address is usable at once.
    flags = [a for e in ipj(container, "addr", "show", "dev", "eth0") for a in e["addr_info"]
             if a["local"] == "2001:db8:77::2"][0]
    assert not flags.get("tentative")
    assert world.run("CHECK", with_prev(config, result), container).ok
    assert world.run("DEL", config, container).ok
    assert world.leases() == []


def test_dual_stack_ping_between_two_containers(world):
    config = world.config(subnet=["10.77.0.0/24", "2001:db8:77::/64"], isGateway=True)
    first, second = world.container(), world.container()
    result_one = world.add(config, first, containerid="one")
    result_two = world.add(config, second, containerid="two")
    check_attachment(world, first, result_one, ["10.77.0.1/24", "2001:db8:77::1/64"])
    assert len(bridge_ports(world.host, world.bridge)) == 2
    v4 = result_two["ips"][0]["address"].split("/")[0]
    v6 = result_two["ips"][1]["address"].split("/")[0]
    first.run("ping", "-c", "1", "-W", "2", v4)
    first.run("ping", "-6", "-c", "1", "-W", "2", v6)
    first.run("ping", "-c", "1", "-W", "2", "10.77.0.1")  # the gateway on the bridge
    for cid, ns in (("one", first), ("two", second)):
        assert world.run("DEL", config, ns, containerid=cid).ok
    assert world.leases() == [] and world.host_veths() == []


def test_l2_only(world):
    container = world.container()
    config = world.config(ipam=False)
    result = world.add(config, container)
    assert "ips" not in result and len(result["interfaces"]) == 3
    assert link(container, "eth0")["operstate"] == "UP"
    assert global_addresses(world.host, world.bridge) == []
    # The reference's CHECK fails on L2 configs (it always delegates IPAM CHECK); ours works.
    assert world.run("CHECK", with_prev(config, result), container).ok
    assert world.run("STATUS", world.config("1.1.0", ipam=False)).ok
    assert world.run("DEL", config, container).ok


def test_existing_bridge_is_reused_and_reconciled(world):
    world.host.run("ip", "link", "add", world.bridge, "type", "bridge")
    index = link(world.host, world.bridge)["ifindex"]
    container = world.container()
    world.add(world.config(mtu=1400), container)
    bridge = link(world.host, world.bridge)
    assert bridge["ifindex"] == index, "handles an existing bridge (keeps ifindex)"
    assert bridge["mtu"] == 1400, "configured mtu set on an existing bridge"
    assert link(container, "eth0")["mtu"] == 1400
    assert bridge["operstate"] in ("UP", "UNKNOWN")


def test_existing_link_that_is_not_a_bridge(world):
    world.host.run("ip", "link", "add", world.bridge, "type", "veth", "peer", "name", unique("p", 10))
    container = world.container()
    run = world.run("ADD", world.config(), container)
    assert not run.ok and run.json["code"] == 7
    assert run.json["msg"] == f'"{world.bridge}" already exists but is not a bridge'
    assert link(container, "eth0") is None and world.leases() == []


def test_bridge_address_conflict_rolls_back_everything(world):
    """'checks ip release in case of error': a failure after IPAM leaves no lease and no veth."""
    world.host.run("ip", "link", "add", world.bridge, "type", "bridge")
    world.host.run("ip", "addr", "add", "10.0.0.1/8", "dev", world.bridge)
    container = world.container()
    run = world.run("ADD", world.config(subnet="10.1.2.0/24", isGateway=True, ipMasq=True), container)
    assert not run.ok
    assert run.json["msg"] == f'"{world.bridge}" already has an IP address different from 10.1.2.1/24'
    assert_nothing_left(world, container)
    assert global_addresses(world.host, world.bridge) == ["10.0.0.1/8"]


def test_force_address_replaces_ipv4(world):
    """'ensure bridge address' case 0: 10.0.0.1/8 replaced by the gateway with forceAddress."""
    world.host.run("ip", "link", "add", world.bridge, "type", "bridge")
    world.host.run("ip", "addr", "add", "10.0.0.1/8", "dev", world.bridge)
    world.add(world.config(subnet="10.1.2.0/24", isGateway=True, forceAddress=True), world.container())
    assert global_addresses(world.host, world.bridge) == ["10.1.2.1/24"]


def test_ipv6_gateways_coexist_unless_overlapping(world):
    """'ensure bridge address' cases 1 and 2."""
    world.host.run("ip", "link", "add", world.bridge, "type", "bridge")
    world.host.run("ip", "addr", "add", "2001:db8:1::1/64", "dev", world.bridge, "nodad")
    world.add(world.config(subnet="2001:db8:2::/64", isGateway=True), world.container())
    assert sorted(global_addresses(world.host, world.bridge)) == ["2001:db8:1::1/64", "2001:db8:2::1/64"]
    run = world.run("ADD", world.config(subnet="2001:db8:1::/48", isGateway=True), world.container(),
                    containerid="other")
    assert not run.ok and "already has an IP address different from 2001:db8:1::1/48" in run.json["msg"]


def test_stable_bridge_mac(world):
    """'creates a bridge with a stable MAC address': pinned when the gateway is set."""
    config = world.config(isGateway=True)
    first = world.add(config, world.container(), containerid="a")
    mac = link(world.host, world.bridge)["address"]
    assert first["interfaces"][0]["mac"] == mac
    second = world.add(config, world.container(), containerid="b")
    assert second["interfaces"][0]["mac"] == mac == link(world.host, world.bridge)["address"]


def neighbour(ns, dev, address):
    """The host's `ip -s -j neigh` entry of `address` on `dev`, or None."""
    return next((e for e in ipj(ns, "-s", "neigh", "show", "dev", dev) if e.get("dst") == address), None)


def test_a_later_add_keeps_the_hosts_neighbour_entries(world):
    """Only the ADD that puts the gateway on the bridge pins its MAC: a MAC set is an address
    change to the kernel, which flushes the neighbour entries of the whole bridge, so pinning on
    every ADD would cost each running container its host ARP entry (issue #17, item 4)."""
    config = world.config(isGateway=True)
    first = world.container()
    result = world.add(config, first, containerid="one")
    address = result["ips"][0]["address"].split("/")[0]
    mac = result["interfaces"][2]["mac"]
    world.host.run("ping", "-c", "1", "-W", "2", address)
    before = neighbour(world.host, world.bridge, address)
    assert before and before["lladdr"] == mac, before
    assert set(before["state"]) & {"REACHABLE", "STALE", "DELAY", "PROBE"}, before

    world.add(config, world.container(), containerid="two")
    after = neighbour(world.host, world.bridge, address)
    # A flushed entry is gone (or left INCOMPLETE/FAILED until traffic asks again).
    assert after and after["lladdr"] == mac, f"flushed by the second ADD: {before} -> {after}"
    assert not set(after["state"]) & {"INCOMPLETE", "FAILED", "NONE"}, after


def test_hairpin_and_port_isolation(world):
    container = world.container()
    result = world.add(world.config(hairpinMode=True, portIsolation=True), container)
    port = link(world.host, result["interfaces"][1]["name"])
    data = port["linkinfo"]["info_slave_data"]
    assert data["hairpin"] is True and data["isolated"] is True
    other = world.add(world.config(), world.container(), containerid="other")
    data = link(world.host, other["interfaces"][1]["name"])["linkinfo"]["info_slave_data"]
    assert data["hairpin"] is False and data["isolated"] is False


def test_promiscuous_mode(world):
    world.add(world.config(promiscMode=True), world.container())
    assert "PROMISC" in link(world.host, world.bridge)["flags"]


def test_hairpin_with_promisc_is_rejected_before_anything(world):
    run = world.run("ADD", world.config(hairpinMode=True, promiscMode=True), world.container())
    assert not run.ok and run.json["code"] == 7
    assert run.json["msg"] == "cannot set hairpin mode and promiscuous mode at the same time"
    assert link(world.host, world.bridge) is None


@pytest.mark.parametrize("keys", [{"vlan": 100}, {"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 210}]},
                                  {"vlan": 100, "vlanTrunk": [{"id": 101}]},
                                  {"vlan": 100, "preserveDefaultVlan": True}])
def test_vlans(world, keys):
    container = world.container()
    supported, reason = vlan_filtering_supported(world.host)
    config = world.config(ipam=False, **keys)
    run = world.run("ADD", config, container)
    if not supported:
        # This kernel cannot filter VLANs on a bridge: the ADD fails cleanly, nothing left.
        assert not run.ok and run.json["code"] == 100, str(run)
        assert_nothing_left(world, container)
        pytest.skip(f"kernel has no bridge VLAN filtering ({reason}); checked the clean failure only")
    assert run.ok, str(run)
    port = run.json["interfaces"][1]["name"]
    vlans = json.loads(world.host.run("bridge", "-j", "vlan", "show", "dev", port))
    vids = {v["vlan"]: v.get("flags", []) for entry in vlans for v in entry["vlans"]}
    if "vlan" in keys:
        assert "PVID" in vids[100] and "Egress Untagged" in vids[100]
    for entry in keys.get("vlanTrunk", []):
        assert entry.get("id", entry.get("minID")) in vids
    if not keys.get("preserveDefaultVlan") and "vlan" in keys:
        assert 1 not in vids


def test_vlan_out_of_range_is_rejected(world):
    for vlan in (-100, 5000):
        run = world.run("ADD", world.config(vlan=vlan), world.container())
        assert run.json["msg"] == f"invalid VLAN ID {vlan} (must be between 0 and 4094)"


def test_mac_spoof_check(world):
    container = world.container()
    config = world.config(macspoofchk=True)
    result = world.add(config, container)
    host_veth, mac = result["interfaces"][1]["name"], result["interfaces"][2]["mac"]
    rules = nft_rules(world.host, "bridge", "nat")
    assert all(r.get("comment") == "macspoofchk-ctr1-eth0" for r in rules) and len(rules) == 4
    text = world.host.run("nft", "list", "table", "bridge", "nat")
    assert f'iifname "{host_veth}" jump cni-br-iface-ctr1-eth0' in text
    assert f"ether saddr {mac} return" in text
    assert world.run("DEL", config, container).ok
    assert nft_rules(world.host, "bridge", "nat") == []


@pytest.mark.parametrize("backend", [None, "iptables", "nftables"])
def test_ipmasq(world, backend):
    """'configures a bridge and ipMasq rules with ipMasqBackend "" / "iptables" / "nftables"'."""
    container = world.container()
    keys = {"ipMasq": True, "isGateway": True}
    if backend:
        keys["ipMasqBackend"] = backend
    config = world.config(subnet=["10.77.0.0/24", "2001:db8:77::/64"], **keys)
    world.add(config, container)
    if backend == "nftables":
        comments = nft_comments(world.host, "inet", "cni_plugins_masquerade")
        mine = [c for c in comments if c and f"net: {world.network}" in c]
        assert len(mine) == 2 and all("if: eth0, id: ctr1" in c for c in mine)
        assert nat_rules(world.host) == []
    else:
        rules = "\n".join(nat_rules(world.host))
        assert "-A POSTROUTING -s 10.77.0.2/32" in rules and "-j MASQUERADE" in rules
        assert "-A POSTROUTING -s 2001:db8:77::2/128" in rules
        assert f'name: \\"{world.network}\\" id: \\"ctr1\\"' in rules
    assert world.run("DEL", config, container).ok
    assert nat_rules(world.host) == []
    assert [c for c in nft_comments(world.host, "inet") if c] == []


def masquerade_base(ns):
    """(handle, text) of each rule in the nftables masquerade table's postrouting chain."""
    listing = json.loads(ns.run("nft", "-j", "-a", "list", "chain", "inet", "cni_plugins_masquerade", "postrouting"))
    return [(item["rule"]["handle"], json.dumps(item["rule"]["expr"], sort_keys=True))
            for item in listing["nftables"] if "rule" in item]


def test_nftables_ipmasq_rewrites_its_base_chain_only_when_needed(world):
    """A later nftables ipMasq ADD finds table, chains and postrouting's three rules intact and
    adds only its own rule: the base keeps its rule handles (not flushed and re-added, which
    leaves the kernel destroy work that our socket's close waits for). A tampered postrouting
    is rewritten as before."""
    config = world.config(ipMasq=True, isGateway=True, ipMasqBackend="nftables")
    first, second, third = world.container(), world.container(), world.container()
    world.add(config, first, containerid="one")
    base = masquerade_base(world.host)
    assert len(base) == 3
    world.add(config, second, containerid="two")
    assert masquerade_base(world.host) == base
    mine = [c for c in nft_comments(world.host, "inet", "cni_plugins_masquerade") if c and "id: two" in c]
    assert len(mine) == 1

    world.host.run("nft", "delete", "rule", "inet", "cni_plugins_masquerade", "postrouting", "handle",
                   str(base[1][0]))
    world.add(config, third, containerid="three")
    repaired = masquerade_base(world.host)
    assert [text for _, text in repaired] == [text for _, text in base]
    assert {handle for handle, _ in repaired}.isdisjoint(handle for handle, _ in base)
    for cid, ns in (("one", first), ("two", second), ("three", third)):
        assert world.run("DEL", config, ns, containerid=cid).ok
    assert [c for c in nft_comments(world.host, "inet") if c] == []


FIREWALL_TOOLS = {"iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore",
                  "ip6tables-restore", "nft"}

# Inside a private mount namespace, iptables and ip6tables resolve to iptables-legacy, whose
# tables nf_tables (and so our netlink reads) cannot see.
LEGACY_IPTABLES = ("unshare", "-m", "--propagation", "private", "sh", "-c",
                   "mount -t tmpfs none /etc/alternatives && for t in iptables ip6tables; do "
                   "for s in '' -save -restore; do ln -s /usr/sbin/$t-legacy$s /etc/alternatives/$t$s; done; "
                   'done && exec "$@"', "sh")


def exec_trace(world, tmp_path, command, config, container, ifname="eth0", outer=(), path=None):
    """Runs the bridge under `strace -f`: the paths of the programs exec'd (itself first), in order."""
    log = tmp_path / unique("execs", 16)
    run = run_plugin("bridge", command, config, netns=container.path, ifname=ifname, path=path,
                     wrapper=(*outer, "ip", "netns", "exec", world.host.name,
                              "strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", str(log)))
    assert run.ok, str(run)
    return [m.group(1) for line in log.read_text().splitlines()
            if "= -1" not in line for m in [re.search(r'execve\("([^"]+)"', line)] if m]


def traced(world, tmp_path, command, config, container, ifname="eth0", outer=()):
    """Runs the bridge under `strace -f`: the firewall programs it exec'd, in order."""
    programs = exec_trace(world, tmp_path, command, config, container, ifname=ifname, outer=outer)
    return [os.path.basename(p) for p in programs if os.path.basename(p) in FIREWALL_TOOLS]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ipmasq_runs_one_firewall_program_per_operation(world, tmp_path, backend):
    """iptables: ADD and DEL run one tool (nf_tables is read over netlink); a DEL with nothing left
    runs none. A second interface of the container shares its iptables chain: that ADD finds the
    chain and lists first, and the first DEL, whose direct delete the other jump makes fail, lists
    too. nftables: nf_tables is read and written over netlink, no program runs at all."""
    container = world.container()
    config = world.config(ipMasq=True, isGateway=True, ipMasqBackend=backend)
    tool = ["iptables-restore"] if backend == "iptables" else []
    assert traced(world, tmp_path, "ADD", config, container) == tool
    relisted = ["iptables-save", "iptables-restore"] if backend == "iptables" else tool
    assert traced(world, tmp_path, "ADD", config, container, ifname="eth1") == relisted
    if backend == "iptables":
        assert len([r for r in nat_rules(world.host) if r.startswith("-A POSTROUTING")]) == 2
    else:
        assert len([c for c in nft_comments(world.host, "inet") if c]) == 2
    failed_first = ["iptables-restore"] + relisted if backend == "iptables" else tool
    assert traced(world, tmp_path, "DEL", config, container) == failed_first
    assert traced(world, tmp_path, "DEL", config, container, ifname="eth1") == tool
    assert nat_rules(world.host) == [] and [c for c in nft_comments(world.host, "inet") if c] == []
    assert traced(world, tmp_path, "DEL", config, container) == []


def test_ipmasq_with_iptables_legacy_lists_with_its_tools(world, tmp_path):
    """iptables-legacy is recognised from the path iptables-save resolves to: its rules are read
    with iptables-save (netlink cannot see them), and they are removed all the same."""
    container = world.container()
    config = world.config(ipMasq=True, isGateway=True, ipMasqBackend="iptables")

    def legacy_rules():
        return [line for line in world.host.run("iptables-legacy-save", "-t", "nat").splitlines() if "CNI-" in line]

    assert traced(world, tmp_path, "ADD", config, container, outer=LEGACY_IPTABLES) == ["iptables-restore"]
    assert any(r.startswith("-A POSTROUTING -s 10.77.0.2/32") for r in legacy_rules())
    assert nat_rules(world.host) == [], "the rules went to nf_tables, not iptables-legacy"
    assert traced(world, tmp_path, "DEL", config, container, outer=LEGACY_IPTABLES) == [
        "iptables-save", "iptables-restore", "ip6tables-save"]
    assert legacy_rules() == []


def test_mac_precedence(world):
    """'uses an explicit MAC address for the container iface' from CNI_ARGS, args, runtimeConfig."""
    cases = [
        ({}, "MAC=c2:11:22:33:44:03", "c2:11:22:33:44:03"),
        ({"args": {"cni": {"mac": "c2:11:22:33:44:02"}}}, "MAC=c2:11:22:33:44:03", "c2:11:22:33:44:02"),
        ({"args": {"cni": {"mac": "c2:11:22:33:44:02"}}, "runtimeConfig": {"mac": "c2:11:22:33:44:01"}},
         "MAC=c2:11:22:33:44:03", "c2:11:22:33:44:01"),
    ]
    for index, (keys, cni_args, expected) in enumerate(cases):
        container = world.container()
        result = world.add(world.config(ipam=False, **keys), container, containerid=f"c{index}", args=cni_args)
        assert result["interfaces"][2]["mac"] == expected
        assert link(container, "eth0")["address"] == expected


def test_disable_container_interface(world):
    container = world.container()
    result = world.add(world.config(ipam=False, disableContainerInterface=True), container)
    assert link(container, "eth0")["operstate"] == "DOWN"
    assert "UP" not in link(container, "eth0")["flags"]
    assert link(world.host, result["interfaces"][1]["name"])["master"] == world.bridge
    run = world.run("ADD", world.config(disableContainerInterface=True), world.container(), containerid="x")
    assert run.json["msg"] == "cannot use IPAM when DisableContainerInterface flag is set"


# ---------------------------------------------------------------------------------------------
# Failures leave nothing behind

def test_missing_ipam_plugin(world):
    container = world.container()
    config = world.config(ipam={"type": "no-such-ipam"}, macspoofchk=True)
    run = world.run("ADD", config, container)
    assert not run.ok and "no-such-ipam" in run.json["msg"]
    assert_nothing_left(world, container)


def test_failed_add_removes_the_bridge_it_created(world, tmp_path):
    """Issue #7: a failed ADD changes nothing on the host, not even the bridge (the reference keeps it)."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    container = world.container()
    config = world.config(ipMasq=True, isGateway=True)
    config["ipam"]["dataDir"] = str(not_a_directory)
    run = world.run("ADD", config, container)
    assert not run.ok and run.json["code"] == 101, str(run)
    assert link(world.host, world.bridge) is None, "the bridge this ADD created was left behind"
    assert_nothing_left(world, container)
    # Refused before anything is created: a path as ipam.type, and an L2 network at 0.2.0.
    for config, code, named in ((world.config(ipam={"type": "../../bin/true"}), 7, "../../bin/true"),
                                (world.config("0.2.0", ipam=False), 1, "0.2.0")):
        run = world.run("ADD", config, container)
        assert not run.ok and run.json["code"] == code and named in run.json["msg"], str(run)
        assert link(world.host, world.bridge) is None and world.host_veths() == []


def test_failed_add_keeps_its_bridge_when_another_port_joined_it(world, tmp_path):
    """The rollback deletes the bridge it created only if no port is left: here the IPAM stand-in
    attaches a link to it (as a concurrent ADD sharing the bridge would) and then fails."""
    ipam = tmp_path / "joining-ipam"
    ipam.write_text(f"""#!/bin/sh
[ "$CNI_COMMAND" = ADD ] || exit 0
ip link add other0 type veth peer name other1 && ip link set other0 master {world.bridge}
printf '{{"cniVersion":"1.0.0","code":102,"msg":"stand-in IPAM fails after the join"}}'
exit 1
""")
    ipam.chmod(0o755)
    container = world.container()
    run = world.run("ADD", world.config(ipam={"type": ipam.name}), container, path=str(tmp_path))
    assert not run.ok and run.json["code"] == 102, str(run)
    assert link(world.host, world.bridge) is not None, "the bridge was deleted under another port"
    assert [port["ifname"] for port in bridge_ports(world.host, world.bridge)] == ["other0"]
    assert world.host_veths() == [] and link(container, "eth0") is None
    assert f"keeping bridge {world.bridge}" in run.stderr


def test_exhausted_range(world):
    config = world.config(subnet="10.77.0.0/30", ipMasq=True, macspoofchk=True)
    world.add(config, world.container(), containerid="first")
    assert world.leases() == ["10.77.0.2"]
    rules_before = nat_rules(world.host)
    container = world.container()
    run = world.run("ADD", config, container, containerid="second")
    assert not run.ok, str(run)
    assert link(container, "eth0") is None
    assert len(world.host_veths()) == 1, "only the first container's veth"
    assert world.leases() == ["10.77.0.2"]
    assert nat_rules(world.host) == rules_before
    assert all("second" not in c for c in nft_comments(world.host))


def test_existing_ifname_in_container(world):
    container = world.container()
    container.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    run = world.run("ADD", world.config(), container)
    assert not run.ok and "already exists" in run.json["msg"] and "eth0" in run.json["msg"]
    assert world.host_veths() == [] and world.leases() == []


def test_bad_netns(world, tmp_path):
    missing = world.run("ADD", world.config(), netns="/run/netns/does-not-exist-" + unique("x"))
    assert missing.json["code"] == 3
    regular = tmp_path / "not-a-netns"
    regular.write_text("")
    not_ns = world.run("ADD", world.config(), netns=str(regular))
    assert not_ns.json["code"] == 4 and "not a network namespace" in not_ns.json["details"]
    own = world.run("ADD", world.config(), netns=world.host.path)
    assert own.json["code"] == 4
    assert link(world.host, world.bridge) is None and world.leases() == []


# ---------------------------------------------------------------------------------------------
# DEL in degraded states: the lease and the rules still go

DEGRADED = ["empty-netns", "netns-gone", "link-gone", "netns-unmounted"]


@pytest.mark.parametrize("state", DEGRADED)
def test_del_degraded(world, state, tmp_path):
    container = world.container()
    config = world.config(ipMasq=True, macspoofchk=True, isGateway=True)
    result = world.add(config, container)
    netns = container.path
    if state == "empty-netns":
        netns = ""
    elif state == "netns-gone":
        sh("ip", "netns", "del", container.name)
    elif state == "link-gone":
        container.run("ip", "link", "del", "eth0")
    elif state == "netns-unmounted":
        # What a runtime leaves when it unmounted the netns but not the file.
        sh("ip", "netns", "del", container.name)
        netns = str(tmp_path / "netns-file")
        Path(netns).write_text("")
    for attempt in range(2):
        run = world.run("DEL", with_prev(config, result), netns=netns)
        assert run.ok, f"DEL #{attempt + 1} in state {state}: {run}"
    assert world.leases() == []
    assert nat_rules(world.host) == []
    assert [c for c in nft_comments(world.host) if c] == []
    if state in ("netns-gone", "netns-unmounted"):
        # With the namespace gone, its veth end (and so the pair) goes with the kernel's
        # asynchronous namespace cleanup, which no plugin can hurry: give it time.
        deadline = time.monotonic() + 10
        while world.host_veths() and time.monotonic() < deadline:
            time.sleep(0.05)
    if state != "empty-netns":
        assert world.host_veths() == []


def test_del_without_prev_result_and_empty_netns_still_removes_rules(world):
    container = world.container()
    config = world.config(ipMasq=True)
    world.add(config, container)
    assert world.run("DEL", config, netns="").ok
    assert nat_rules(world.host) == [] and world.leases() == []


# A shared key of the wrong type: ADD refuses it (code 7, naming the key), but a DEL after the
# admin edited the conflist must still remove the veth, the lease and the rules.
MISTYPED_SHARED_KEYS = [{"ipMasq": "yes"}, {"dns": "x"}, {"mtu": "x"}, {"ipMasq": "yes", "dns": "x", "mtu": "x"}]


@pytest.mark.parametrize("edit", MISTYPED_SHARED_KEYS, ids=lambda e: "+".join(e))
def test_del_of_config_with_mistyped_shared_keys(world, edit):
    container = world.container()
    config = world.config(ipMasq=True, macspoofchk=True, isGateway=True)
    world.add(config, container)
    assert nat_rules(world.host) or [c for c in nft_comments(world.host) if c], "ADD made masquerade rules"
    edited = dict(config, **edit)
    refused = world.run("ADD", edited, world.container(), containerid="other")
    assert refused.error_code() == 7 and any(key in str(refused.json) for key in edit), str(refused)
    run = world.run("DEL", edited, container)
    assert run.ok, str(run)
    assert_nothing_left(world, container)
    assert nft_rules(world.host, "bridge", "nat") == [], "a spoof-check rule was left behind"


def test_del_of_config_with_mistyped_ipam(world):
    """A wrong-typed `ipam` names no IPAM plugin: DEL removes the veth and the rules and exits 0;
    the lease stays with host-local until a DEL (or GC) under the corrected config."""
    container = world.container()
    config = world.config(ipMasq=True, isGateway=True)
    world.add(config, container)
    leases = world.leases()
    run = world.run("DEL", dict(config, ipam=["host-local"]), container)
    assert run.ok, str(run)
    assert world.host_veths() == [] and link(container, "eth0") is None
    assert nat_rules(world.host) == [] and [c for c in nft_comments(world.host) if c] == []
    assert world.leases() == leases and len(leases) == 1, "no IPAM plugin was named, so none was called"
    assert world.run("DEL", config, container).ok
    assert_nothing_left(world, container)


def test_two_interfaces_of_one_container(world):
    container = world.container()
    config = world.config(ipMasq=True, macspoofchk=True)
    world.add(config, container, ifname="eth0")
    world.add(config, container, ifname="eth1")
    assert world.run("DEL", config, container, ifname="eth0").ok
    rules = "\n".join(nat_rules(world.host))
    assert "-A POSTROUTING -s 10.77.0.3/32" in rules and "10.77.0.2/32" not in rules
    assert set(nft_comments(world.host, "bridge")) == {"macspoofchk-ctr1-eth1"}
    assert world.leases() == ["10.77.0.3"]
    assert world.run("DEL", config, container, ifname="eth1").ok
    assert nat_rules(world.host) == []


# ---------------------------------------------------------------------------------------------
# CHECK, STATUS, GC

def test_check_after_tampering(world):
    container = world.container()
    config = world.config(isDefaultGateway=True)
    result = world.add(config, container)
    checked = with_prev(config, result)
    assert world.run("CHECK", checked, container).ok
    assert world.run("CHECK", config, container).json["msg"] == "Required prevResult missing"

    container.run("ip", "route", "del", "default")
    run = world.run("CHECK", checked, container)
    assert not run.ok and "0.0.0.0/0" in run.json["msg"]
    container.run("ip", "route", "add", "default", "via", "10.77.0.1")

    container.run("ip", "addr", "del", "10.77.0.2/24", "dev", "eth0")
    run = world.run("CHECK", checked, container)
    assert run.json["msg"] == "Failed to match addr 10.77.0.2/24 on interface eth0"

    container.run("ip", "link", "del", "eth0")
    run = world.run("CHECK", checked, container)
    assert not run.ok and "eth0" in run.json["msg"]


def test_check_wrong_mac_and_promisc(world):
    container = world.container()
    config = world.config(ipam=False)
    result = world.add(config, container)
    world.host.run("ip", "link", "set", world.bridge, "promisc", "on")
    run = world.run("CHECK", with_prev(config, result), container)
    assert "Promisc Mode" in run.json["msg"]
    world.host.run("ip", "link", "set", world.bridge, "promisc", "off")
    container.run("ip", "link", "set", "eth0", "address", "c2:00:00:00:00:99")
    run = world.run("CHECK", with_prev(config, result), container)
    assert "doesn't match container Mac" in run.json["msg"]


def test_status(world):
    assert world.run("STATUS", world.config("1.1.0")).ok
    missing = world.run("STATUS", world.config("1.1.0", ipam={"type": "no-such-ipam"}))
    assert not missing.ok and "no-such-ipam" in missing.json["msg"]
    assert missing.json["code"] == 50, "a plugin not installed (yet) is not available, not a config error"
    assert world.run("STATUS", world.config("1.0.0")).json["code"] == 1


def test_gc_removes_what_is_not_valid(world):
    config = world.config("1.1.0", ipMasq=True, macspoofchk=True)
    keep, drop = world.container(), world.container()
    world.add(config, keep, containerid="keep")
    dropped = world.add(config, drop, containerid="drop")
    # The runtime lost "drop" (no DEL): its netns and veth are gone, its lease and rules remain.
    sh("ip", "netns", "del", drop.name)
    # The kernel destroys a deleted netns's veth pair asynchronously: wait until the host end is
    # gone, as it is long before a runtime's GC.
    host_veth = dropped["interfaces"][1]["name"]
    deadline = time.monotonic() + 10
    while host_veth in world.host_veths() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_veth not in world.host_veths()
    assert len(world.leases()) == 2
    gc = dict(config)
    gc["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    run = run_in(world.host, "bridge", "GC", gc, containerid="", ifname="")
    assert run.ok, str(run)
    assert world.leases() == ["10.77.0.2"]
    rules = "\n".join(nat_rules(world.host))
    assert "10.77.0.2/32" in rules and "10.77.0.3/32" not in rules
    assert set(c for c in nft_comments(world.host, "bridge")) == {"macspoofchk-keep-eth0"}


# ---------------------------------------------------------------------------------------------
# Results in every version, delegation to the reference's IPAM

@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_legacy_versions(world, version):
    container = world.container()
    result = world.add(world.config(version, isGateway=True), container)
    assert result["ip4"]["ip"] == "10.77.0.2/24" and "interfaces" not in result
    # More than one address per family cannot be written in these versions (host-local refuses).
    run = world.run("ADD", world.config(version, subnet=["10.77.1.0/24", "10.77.2.0/24", "2001:db8::/64"]),
                    world.container(), containerid="three")
    assert not run.ok
    assert world.host_veths() == [next(n for n in world.host_veths())] and len(world.host_veths()) == 1


def test_delegates_to_reference_host_local(world):
    reference = REF_DIR / "host-local"
    if not reference.exists():
        pytest.skip(f"reference host-local not installed at {reference}")
    container = world.container()
    config = world.config()
    result = world.add(config, container, path=str(REF_DIR))
    assert result["ips"][0]["address"] == "10.77.0.2/24"
    assert world.leases() == ["10.77.0.2"]
    assert world.run("DEL", config, container, path=str(REF_DIR)).ok
    assert world.leases() == []


def test_ipam_of_this_very_build_runs_in_process(world, tmp_path):
    """bin/host-local is the bridge's own executable (one multi-call binary): ADD and DEL exec
    nothing but the bridge, and the lease is taken and released all the same."""
    container = world.container()
    config = world.config()
    assert exec_trace(world, tmp_path, "ADD", config, container) == [str(BIN_DIR / "bridge")]
    assert world.leases() == ["10.77.0.2"]
    assert exec_trace(world, tmp_path, "DEL", config, container) == [str(BIN_DIR / "bridge")]
    assert world.leases() == []


def test_ipam_that_is_another_program_is_execd(world, tmp_path):
    """A host-local that is not this build is exec'd as the spec says: the reference one, and
    ours behind a wrapper script (a user's replacement, say) whose file differs."""
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    (wrapped / "host-local").write_text(f'#!/bin/sh\nexec {BIN_DIR / "host-local"} "$@"\n')
    (wrapped / "host-local").chmod(0o755)
    cases = [(str(wrapped), [str(wrapped / "host-local"), str(BIN_DIR / "host-local")])]
    if (REF_DIR / "host-local").exists():
        cases.append((str(REF_DIR), [str(REF_DIR / "host-local")]))
    for path, delegates in cases:
        container = world.container()
        config = world.config()
        bridge = [str(BIN_DIR / "bridge")]
        assert exec_trace(world, tmp_path, "ADD", config, container, path=path) == bridge + delegates
        # One lease (the next address each time: host-local goes round the range).
        assert len(world.leases()) == 1
        assert exec_trace(world, tmp_path, "DEL", config, container, path=path) == bridge + delegates
        assert world.leases() == []


# ---------------------------------------------------------------------------------------------
# conf-examples work as given (bridge name and dataDir replaced so they stay private)

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "conf-examples").glob("bridge-*")
                  if "vlan" not in p.name)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_conf_examples(world, example):
    document = json.loads(example.read_text())
    if "plugins" in document:
        config = dict(document["plugins"][0], cniVersion=document["cniVersion"], name=document["name"])
    else:
        config = document
    config["bridge"] = world.bridge
    config["name"] = world.network
    if config.get("ipam", {}).get("type") == "host-local":
        config["ipam"]["dataDir"] = world.data_dir
    container = world.container()
    result = world.add(config, container)
    assert result["interfaces"][2]["sandbox"] == container.path
    if config["cniVersion"] >= "0.4.0":
        check = world.run("CHECK", with_prev(config, result), container)
        assert check.ok, str(check)
    assert world.run("DEL", with_prev(config, result), container).ok
    assert_nothing_left(world, container)
