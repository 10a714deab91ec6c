"""Helpers for the bridge integration tests (no tests here): a private "host" namespace per test.

The plugin runs as `ip netns exec <host> bridge`, so the bridge, the host veths, the forwarding
sysctls and every firewall rule live in a namespace the test created: the real host is never
touched. CNI_NETNS points at other namespaces of the test (the containers).
"""

import json
import subprocess
from pathlib import Path

import pytest

from cnitest import run_plugin, sh, unique


def run_in(host, plugin, command, config, **kwargs):
    """Exec `plugin` inside namespace `host` as a runtime would (CNI_* env, config on stdin)."""
    return run_plugin(plugin, command, config, wrapper=("ip", "netns", "exec", host.name), **kwargs)


def ipj(ns, *argv):
    """`ip -j ...` inside a namespace (object with .name)."""
    out = sh("ip", "-n", ns.name, "-j", *argv)
    return json.loads(out) if out.strip() else []


def link(ns, name):
    """The `ip -j -d link show` entry of `name` in `ns`, or None."""
    proc = subprocess.run(["ip", "-n", ns.name, "-j", "-d", "link", "show", "dev", name],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    entries = json.loads(proc.stdout)
    return entries[0] if entries else None


def links(ns):
    return [entry["ifname"] for entry in ipj(ns, "link", "show")]


def addresses(ns, name):
    """[(local, prefixlen, broadcast or None)] of link `name`."""
    entries = ipj(ns, "addr", "show", "dev", name)
    return [(a["local"], a["prefixlen"], a.get("broadcast")) for e in entries for a in e.get("addr_info", [])]


def global_addresses(ns, name):
    return [f"{a}/{p}" for a, p, _ in addresses(ns, name) if not a.startswith("fe80") and a != "::1"]


def bridge_ports(ns, bridge):
    """Link entries of the ports of `bridge` (ip -d, with linkinfo.info_slave_data)."""
    return [e for e in ipj(ns, "-d", "link", "show", "master", bridge)]


def nat_rules(ns):
    """iptables-save -t nat lines mentioning CNI (IPv4 and IPv6)."""
    out = ns.run("iptables-save", "-t", "nat", check=False) + ns.run("ip6tables-save", "-t", "nat", check=False)
    return [line for line in out.splitlines() if "CNI-" in line]


def nft_ruleset(ns):
    out = ns.run("nft", "-j", "list", "ruleset", check=False)
    return json.loads(out) if out.strip() else {"nftables": []}


def nft_rules(ns, family=None, table=None):
    """The nft rule objects in `ns` (optionally of one family/table)."""
    rules = []
    for item in nft_ruleset(ns).get("nftables", []):
        rule = item.get("rule")
        if rule and (family is None or rule["family"] == family) and (table is None or rule["table"] == table):
            rules.append(rule)
    return rules


def nft_comments(ns, family=None, table=None):
    return [r.get("comment", "") for r in nft_rules(ns, family, table)]


def leases(data_dir, network):
    directory = Path(data_dir) / network
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.name != "lock" and not p.name.startswith("last_reserved_ip") and not p.name.startswith("."))


class World:
    """One test's namespaces: `host` (where the plugin runs) and containers made on demand."""

    def __init__(self, factory, tmp_path):
        self.factory = factory
        self.host = factory("swh")
        self.bridge = unique("cni-t", 12)
        self.network = unique("net", 12)
        self.data_dir = str(tmp_path / "leases")

    def container(self):
        return self.factory("swc")

    def config(self, version="1.0.0", subnet="10.77.0.0/24", ipam=True, **keys):
        config = {"cniVersion": version, "name": self.network, "type": "bridge", "bridge": self.bridge}
        if ipam is True:
            subnets = subnet if isinstance(subnet, list) else [subnet]
            config["ipam"] = {"type": "host-local", "ranges": [[{"subnet": s}] for s in subnets],
                              "dataDir": self.data_dir}
        elif isinstance(ipam, dict):
            config["ipam"] = ipam
        config.update(keys)
        return config

    def run(self, command, config, container=None, **kwargs):
        netns = kwargs.pop("netns", container.path if container else "")
        return run_in(self.host, "bridge", command, config, netns=netns, **kwargs)

    def add(self, config, container, **kwargs):
        run = self.run("ADD", config, container, **kwargs)
        assert run.ok, str(run)
        return run.json

    def leases(self):
        return leases(self.data_dir, self.network)

    def host_veths(self):
        return [name for name in links(self.host) if name.startswith("veth")]


@pytest.fixture
def world(netns_factory, tmp_path):
    return World(netns_factory, tmp_path)


def with_prev(config, result):
    config = dict(config)
    config["prevResult"] = result
    return config


def vlan_filtering_supported(ns):
    name = unique("vlt", 12)
    proc = subprocess.run(["ip", "-n", ns.name, "link", "add", name, "type", "bridge", "vlan_filtering", "1"],
                          capture_output=True, text=True)
    subprocess.run(["ip", "-n", ns.name, "link", "del", name], capture_output=True)
    return proc.returncode == 0, proc.stderr.strip()
