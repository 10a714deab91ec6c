"""Addressing the way Docker and Calico users expect (issue #15), through the built plugins:
ranges podman's --ip-range writes, host-local `exclude`, family and pool choice, bridge
`macFromIP`.

host-local tests need no namespace (each has its own dataDir); bridge tests run in namespaces
of their own (test_bridge_support.World). podman's --ip-range is in test_podman.py.
"""

import ipaddress
import shutil
import tempfile
from pathlib import Path

import pytest

from cnitest import REF_DIR, run_plugin
from test_bridge_support import addresses, global_addresses, link, nft_rules, with_prev, world  # noqa: F401 (fixture)

NETNS = "/var/run/netns/ipam-test-unused"  # IPAM plugins never enter it; the skel needs it set
REF = REF_DIR / "host-local"


@pytest.fixture
def data_dir():
    path = Path(tempfile.mkdtemp(prefix="addressing-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def conf(data_dir, ranges, version="1.0.0", name="mynet", **extra):
    return {"cniVersion": version, "name": name, "type": "ipvlan",
            "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": ranges}, **extra}


def add(config, plugin="host-local", **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin(plugin, "ADD", config, **kw)


def delete(config, **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin("host-local", "DEL", config, **kw)


def lease_names(data_dir, network="mynet"):
    directory = data_dir / network
    names = []
    for entry in directory.iterdir() if directory.exists() else []:
        try:
            ipaddress.ip_address(entry.name)
        except ValueError:
            continue
        names.append(entry.name)
    return sorted(names, key=lambda name: (":" in name, ipaddress.ip_address(name)))


def fill(config, limit=600):
    """ADD until the range is exhausted; returns the addresses handed out and the refusal."""
    got = []
    for i in range(limit):
        run = add(config, containerid=f"c{i}")
        if not run.ok:
            return got, run
        got += [ip["address"].split("/")[0] for ip in run.json["ips"]]
    raise AssertionError(f"still allocating after {limit} ADDs")


def hosts(first, last):
    a, b = int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last))
    return [str(ipaddress.ip_address(v)) for v in range(a, b + 1)]


# --- Ranges real clients write ---------------------------------------------------------------

@pytest.mark.parametrize("bounds, span", [
    ({"rangeStart": "10.1.7.225", "rangeEnd": "10.1.7.255"}, ("10.1.7.225", "10.1.7.254")),  # upper part, broadcast end
    ({"rangeStart": "10.1.7.0", "rangeEnd": "10.1.7.31"}, ("10.1.7.2", "10.1.7.31")),  # network start (.1 the gateway)
    ({"rangeStart": "10.1.7.0", "rangeEnd": "10.1.7.255"}, None),  # the whole subnet: on a /27 below
])
def test_ranges_ending_at_broadcast_or_starting_at_the_network_are_served_without_either(data_dir, bounds, span):
    subnet = "10.1.7.0/24" if span else "10.1.7.0/27"
    if span is None:
        bounds = {"rangeStart": "10.1.7.0", "rangeEnd": "10.1.7.31"}
        span = ("10.1.7.2", "10.1.7.30")
    config = conf(data_dir, [[{"subnet": subnet, **bounds}]])
    got, refusal = fill(config)
    assert refusal.error_code() == 102, refusal
    assert sorted(got, key=ipaddress.ip_address) == hosts(*span)
    network = ipaddress.ip_network(subnet)
    assert str(network.network_address) not in got and str(network.broadcast_address) not in got
    assert lease_names(data_dir) == hosts(*span)
    # Requesting the broadcast address is refused, and leaves nothing.
    run = add(config, containerid="bcast", args=f"IP={network.broadcast_address}")
    assert not run.ok and str(network.broadcast_address) in run.json["msg"]


@pytest.mark.skipif(not REF.exists(), reason=f"reference plugin {REF} missing")
def test_the_reference_accepts_the_same_configs(data_dir):
    """The configs above are valid for the reference too (so accepting them is drop-in)."""
    for i, bounds in enumerate(({"rangeStart": "10.1.7.250", "rangeEnd": "10.1.7.255"},
                                {"rangeStart": "10.1.7.0", "rangeEnd": "10.1.7.255"})):
        config = conf(data_dir, [[{"subnet": "10.1.7.0/24", **bounds}]], name=f"refnet{i}")
        assert add(config, plugin=str(REF)).ok


# --- exclude ---------------------------------------------------------------------------------

def test_excluded_addresses_are_never_handed_out_over_a_full_range(data_dir):
    exclude = ["10.1.8.5", "10.1.8.10-10.1.8.14", "10.1.8.32/29", "10.1.8.62"]
    ranges = [[{"subnet": "10.1.8.0/26", "exclude": exclude}], [{"subnet": "fd00:15:8::/120",
                                                                 "rangeEnd": "fd00:15:8::40",
                                                                 "exclude": ["fd00:15:8::3-fd00:15:8::7"]}]]
    config = conf(data_dir, ranges)
    excluded_v4 = {"10.1.8.5", *hosts("10.1.8.10", "10.1.8.14"), *hosts("10.1.8.32", "10.1.8.39"), "10.1.8.62"}
    excluded_v6 = set(hosts("fd00:15:8::3", "fd00:15:8::7"))
    got, refusal = fill(config)
    v4 = [a for a in got if "." in a]
    v6 = [a for a in got if ":" in a]
    # IPv4: .2-.62 (.1 gateway) less 15 excluded = 46; IPv6 ::2-::40 less 5 = 58: v4 runs out first.
    assert sorted(v4, key=ipaddress.ip_address) == [a for a in hosts("10.1.8.2", "10.1.8.62") if a not in excluded_v4]
    assert len(v4) == 46 and not excluded_v4 & set(v6 + v4)
    assert not excluded_v6 & set(v6) and len(v6) == 46
    assert refusal.error_code() == 102 and "10.1.8." in refusal.json["msg"], refusal
    assert len(lease_names(data_dir)) == 92
    # Round robin wraps: a released address comes back, excluded ones still never do.
    assert delete(config, containerid="c3").ok
    again = add(config, containerid="again")
    assert again.ok and again.json["ips"][0]["address"].split("/")[0] == v4[3]


def test_a_requested_address_inside_an_exclusion_is_refused_naming_the_entry(data_dir):
    config = conf(data_dir, [[{"subnet": "10.1.9.0/24", "exclude": ["10.1.9.1", "10.1.9.64/28"]}]])
    for how in ({"args": "IP=10.1.9.70"},
                {"config": {**config, "args": {"cni": {"ips": ["10.1.9.70"]}}}},
                {"config": {**config, "runtimeConfig": {"ips": ["10.1.9.70/24"]}}}):
        run = add(how.get("config", config), args=how.get("args"))
        assert run.error_code() == 102, run
        assert run.json["msg"] == 'requested IP 10.1.9.70 is excluded by ipam.ranges[0][0].exclude[1] "10.1.9.64/28"'
    assert not (data_dir / "mynet").exists() or lease_names(data_dir) == []
    assert add(config, args="IP=10.1.9.80").ok


# --- Family and pool choice ------------------------------------------------------------------

DUAL_TWO_POOLS = [[{"subnet": "10.22.0.0/24"}], [{"subnet": "10.23.0.0/24"}], [{"subnet": "fd00:15:22::/64"}]]


@pytest.mark.parametrize("how, expected", [
    ({}, ["10.22.0.2/24", "10.23.0.2/24", "fd00:15:22::2/64"]),
    ({"args": "IPFAMILY=ipv4"}, ["10.22.0.2/24", "10.23.0.2/24"]),
    ({"cni": {"ipFamilies": ["ipv6"]}}, ["fd00:15:22::2/64"]),
    ({"args": "IPPOOL=10.23.0.0/24"}, ["10.23.0.2/24"]),
    ({"cni": {"ipPools": ["fd00:15:22::/64", "10.22.0.0/24"]}}, ["10.22.0.2/24", "fd00:15:22::2/64"]),
    ({"cni": {"ipFamilies": ["ipv4", "ipv6"], "ipPools": ["10.23.0.0/24"]}}, ["10.23.0.2/24", "fd00:15:22::2/64"]),
    ({"args": "IPFAMILY=ipv4", "cni": {"ipFamilies": ["ipv6"]}}, ["fd00:15:22::2/64"]),  # args.cni wins
])
def test_family_and_pool_choice_on_a_dual_stack_two_pool_network(data_dir, how, expected):
    config = conf(data_dir, DUAL_TWO_POOLS)
    if "cni" in how:
        config["args"] = {"cni": how["cni"]}
    run = add(config, args=how.get("args"))
    assert run.ok, run
    assert [ip["address"] for ip in run.json["ips"]] == expected
    assert lease_names(data_dir) == [a.split("/")[0] for a in expected]
    # CHECK with the same request agrees; DEL releases what was taken.
    checked = run_plugin("host-local", "CHECK", {**config, "prevResult": run.json}, netns=NETNS, args=how.get("args"))
    assert checked.ok, checked
    assert delete(config).ok and lease_names(data_dir) == []


def test_choosing_what_the_network_lacks_is_refused_listing_what_it_has(data_dir):
    v4_only = conf(data_dir, DUAL_TWO_POOLS[:2])
    run = add(v4_only, args="IPFAMILY=ipv6")
    assert run.error_code() == 7, run
    assert run.json["msg"] == "CNI_ARGS IPFAMILY asks for ipv6, which this network does not have"
    assert run.json["details"] == "its range sets are of: ipv4"
    run = add(conf(data_dir, DUAL_TWO_POOLS), args="IPPOOL=10.24.0.0/24")
    assert run.error_code() == 7 and run.json["details"] == \
        "its pools (subnets): 10.22.0.0/24, 10.23.0.0/24, fd00:15:22::/64", run
    assert not (data_dir / "mynet").exists(), "a refused choice must not touch the store"


def test_dual_stack_allocates_both_or_neither(data_dir):
    # The IPv6 set has a single address (::2; ::1 is the gateway).
    config = conf(data_dir, [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:15:22::/64", "rangeEnd": "fd00:15:22::2"}]])
    assert add(config, containerid="a", args="IPFAMILY=ipv4,ipv6").ok
    refused = add(config, containerid="b", args="IPFAMILY=ipv4,ipv6")
    assert refused.error_code() == 102, refused
    assert lease_names(data_dir) == ["10.22.0.2", "fd00:15:22::2"], "the failed ADD kept its IPv4 lease"
    only_v4 = add(config, containerid="b", args="IPFAMILY=ipv4")
    assert only_v4.ok and [ip["address"] for ip in only_v4.json["ips"]][0].startswith("10.22.0.")


def test_static_takes_the_chosen_addresses(data_dir):
    config = {"cniVersion": "1.0.0", "name": "st", "type": "ipvlan",
              "ipam": {"type": "static", "addresses": [{"address": "10.22.0.5/24"}, {"address": "fd00:15:22::5/64"}]}}
    run = run_plugin("static", "ADD", config, netns=NETNS, args="IPFAMILY=ipv6")
    assert run.ok and [ip["address"] for ip in run.json["ips"]] == ["fd00:15:22::5/64"], run
    run = run_plugin("static", "ADD", {**config, "args": {"cni": {"ipPools": ["10.22.0.0/24"]}}}, netns=NETNS)
    assert run.ok and [ip["address"] for ip in run.json["ips"]] == ["10.22.0.5/24"], run


# --- bridge macFromIP ------------------------------------------------------------------------

def test_mac_from_ip_is_set_in_the_kernel_reported_and_checked(world):
    container = world.container()
    config = world.config(subnet=["10.77.0.0/24", "fd00:15:77::/64"], macFromIP=True, macspoofchk=True)
    result = world.add(config, container)
    mac = "02:42:0a:4d:00:02"  # 10.77.0.2
    assert [ip["address"] for ip in result["ips"]] == ["10.77.0.2/24", "fd00:15:77::2/64"]
    assert result["interfaces"][2]["mac"] == mac
    eth0 = link(container, "eth0")
    assert eth0["address"] == mac and eth0["operstate"] == "UP"
    # The link-local address was made from the final MAC (it was set before the link came up).
    assert ("fe80::42:aff:fe4d:2", 64) in [(a, p) for a, p, _ in addresses(container, "eth0")]
    # macspoofchk lets exactly that MAC out.
    text = world.host.run("nft", "list", "table", "bridge", "nat")
    assert f"ether saddr {mac} return" in text, text
    checked = with_prev(config, result)
    assert world.run("CHECK", checked, container).ok
    container.run("ip", "link", "set", "eth0", "address", "02:42:0a:4d:00:99")
    run = world.run("CHECK", checked, container)
    assert run.error_code() == 105 and "macFromIP" in run.json["msg"], run
    without_mac = with_prev(config, {**result, "interfaces": [{k: v for k, v in i.items() if k != "mac"}
                                                             for i in result["interfaces"]]})
    run = world.run("CHECK", without_mac, container)
    assert run.json["msg"] == ("Interface eth0 Mac 02:42:0a:4d:00:99 is not 02:42:0a:4d:00:02, "
                               "the MAC of its address (macFromIP)"), run
    assert world.run("DEL", config, container).ok
    assert nft_rules(world.host, "bridge", "nat") == []


def test_mac_from_ip_follows_a_reused_address_and_yields_to_an_explicit_mac(world):
    config = world.config(macFromIP=True)
    first = world.container()
    assert world.add(config, first, containerid="a", args="IgnoreUnknown=1;IP=10.77.0.9")["interfaces"][2]["mac"] == "02:42:0a:4d:00:09"
    assert world.run("DEL", config, first, containerid="a").ok
    # A new container on the same address gets the same MAC: neighbours' ARP caches stay right.
    second = world.container()
    result = world.add(config, second, containerid="b", args="IgnoreUnknown=1;IP=10.77.0.9")
    assert result["interfaces"][2]["mac"] == link(second, "eth0")["address"] == "02:42:0a:4d:00:09"
    explicit = world.container()
    result = world.add(config, explicit, containerid="c", args="IgnoreUnknown=1;MAC=c2:11:22:33:44:55")
    assert result["interfaces"][2]["mac"] == link(explicit, "eth0")["address"] == "c2:11:22:33:44:55"
    assert world.run("CHECK", with_prev(config, result), explicit, containerid="c", args="IgnoreUnknown=1;MAC=c2:11:22:33:44:55").ok


def test_mac_from_ip_on_an_ipv6_only_network_uses_the_low_32_bits(world):
    container = world.container()
    result = world.add(world.config(subnet="fd00:15:77::/64", macFromIP=True), container)
    assert result["ips"][0]["address"] == "fd00:15:77::2/64"
    assert result["interfaces"][2]["mac"] == link(container, "eth0")["address"] == "02:42:00:00:00:02"


def test_family_and_pool_choice_through_the_bridge_on_a_dual_stack_two_pool_network(world):
    config = world.config(subnet=["10.77.0.0/24", "10.78.0.0/24", "fd00:15:77::/64"])
    by_cni_args = world.container()
    result = world.add(config, by_cni_args, containerid="a", args="IgnoreUnknown=1;IPFAMILY=ipv4")
    assert [ip["address"] for ip in result["ips"]] == ["10.77.0.2/24", "10.78.0.2/24"]
    assert sorted(global_addresses(by_cni_args, "eth0")) == ["10.77.0.2/24", "10.78.0.2/24"]
    by_family = world.container()
    world.add({**config, "args": {"cni": {"ipFamilies": ["ipv6"]}}}, by_family, containerid="b")
    assert global_addresses(by_family, "eth0") == ["fd00:15:77::2/64"]
    by_pool = world.container()
    result = world.add({**config, "args": {"cni": {"ipPools": ["10.78.0.0/24"]}}}, by_pool, containerid="c")
    assert global_addresses(by_pool, "eth0") == ["10.78.0.3/24"]
    assert world.leases() == ["10.77.0.2", "10.78.0.2", "10.78.0.3", "fd00:15:77::2"]
    # A pool the network lacks: refused before anything stays (no veth, no lease).
    refused = world.run("ADD", config, world.container(), containerid="d", args="IgnoreUnknown=1;IPPOOL=10.79.0.0/24")
    assert refused.error_code() == 7 and "10.79.0.0/24" in refused.json["msg"], refused
    assert len(world.host_veths()) == 3
    assert world.leases() == ["10.77.0.2", "10.78.0.2", "10.78.0.3", "fd00:15:77::2"]


# --- The README walkthrough runs as written --------------------------------------------------

def test_readme_docker_style_walkthrough(tmp_path):
    """The shell block of README's walkthrough, run with unique namespace, bridge and file names;
    the results its comments promise are checked."""
    import re
    import subprocess

    from cnitest import BIN_DIR, REPO, unique

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Docker-style addressing: a walkthrough"):]
    script = section[section.index("```sh\n") + 6:section.index("```\n", section.index("```sh\n") + 6)]
    names = {word: unique(f"sw15{word}-", 14) for word in ("node", "web", "db")}
    for word, name in names.items():
        script = re.sub(rf"\b{word}\b", name, script)
    script = (script.replace("/tmp/docker-style.json", str(tmp_path / "config.json"))
              .replace("/tmp/docker-style-leases", str(tmp_path / "leases"))
              .replace("cni-docker0", unique("cni-w", 12))
              .replace("$PWD/bin", str(BIN_DIR)).replace("bin/bridge", str(BIN_DIR / "bridge")))
    try:
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert '"address":"10.90.0.10/24"' in out and '"address":"fd00:90::10/64"' in out, out
    assert '"mac":"02:42:0a:5a:00:0a"' in out and "02:42:0a:5a:00:0a" in out.split("\n", 1)[1], out
    assert ('"code":102' in out and
            'requested IP 10.90.0.254 is excluded by ipam.ranges[0][0].exclude[0] \\"10.90.0.254\\"' in out), out
    last = out.strip().splitlines()[-1]
    assert '"address":"10.90.0.11/24"' in last and "fd00:90" not in last and '"mac":"02:42:0a:5a:00:0b"' in last, out


def test_static_conf_example_with_a_family_choice():
    import json

    from cnitest import REPO
    example = json.loads((REPO / "conf-examples/static-ipv4-only.conf").read_text())
    run = run_plugin("static", "ADD", example, netns=NETNS)
    assert run.ok and [ip["address"] for ip in run.json["ips"]] == ["10.27.0.5/24"], run
