"""podman 4.3 (CNI backend) drives our plugins: the conflists podman writes (0.4.0: bridge with
host-local, then portmap, firewall, tuning), its CNI_ARGS for --ip, port publishing, a bridge with
static IPAM, network connect/disconnect, --ip-range ranges (rangeEnd at the broadcast address),
macFromIP and exclude in a hand-written conflist, and nothing left behind after `podman rm`.

A private podman (own config, storage and network dir under a temp dir) runs containers from a
busybox rootfs (`--rootfs`), since no registry is reachable. Set SWIFT_CNI_BIN=/usr/lib/cni to
run the same checks against the reference plugins."""

import ipaddress
import json
import random
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from clients.common import (announce, assemble_plugin_dir, firewall_mentions, free_subnet, leases, plugins_under_test,
                            veths_on_bridge)
from clients.images import build_rootfs
from clients.podman import Podman, find_podman_or_fail
from cnitest import sh, unique


@pytest.fixture(scope="module")
def podman(request, tmp_path_factory):
    find_podman_or_fail()
    base = tmp_path_factory.mktemp("podman")
    engine = Podman(base, assemble_plugin_dir(base / "cni-bin"), build_rootfs(base / "rootfs"))
    try:
        announce(request, f"podman {engine.version()} (CNI backend, runc) with {plugins_under_test()}")
        yield engine
    finally:
        engine.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def assert_nothing_left(network: dict, container_id: str, addresses):
    """After `podman rm`: no lease, no veth on the bridge, no firewall rule naming the container."""
    name, bridge = network["name"], network["network_interface"]
    assert leases(name) == [], f"leases left in /var/lib/cni/networks/{name}"
    assert veths_on_bridge(bridge) == [], f"veths left on {bridge}"
    hosts = [f"{a}/{128 if ':' in a else 32}" for a in addresses]
    left = firewall_mentions(container_id, *hosts, *(f" {a} " for a in addresses))
    assert left == [], "firewall rules left:\n" + "\n".join(left)


def test_podman_writes_a_040_chain_and_two_containers_ping(podman):
    network = podman.create_network()
    conflist = podman.conflist(network["name"])
    assert conflist["cniVersion"] == "0.4.0"
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    first = podman.run(network["name"], "sleep", "600")
    second = podman.run(network["name"], "sleep", "600")
    first_ip, second_ip = podman.addresses(first), podman.addresses(second)
    assert len(first_ip) == 1 and len(second_ip) == 1 and first_ip != second_ip
    subnet = network["subnets"][0]["subnet"]
    assert sorted(leases(network["name"])) == sorted(first_ip + second_ip), f"leases of {subnet}"
    assert len(veths_on_bridge(network["network_interface"])) == 2
    out = podman.exec(first, "ping", "-c", "2", "-W", "3", second_ip[0])
    assert "2 packets received" in out, out
    out = podman.exec(second, "ping", "-c", "2", "-W", "3", first_ip[0])
    assert "2 packets received" in out, out
    podman("rm", "-f", "-t", "0", first, second)
    assert_nothing_left(network, first, first_ip + second_ip)
    assert_nothing_left(network, second, [])


def test_podman_ip_and_mac_give_the_requested_values(podman):
    # podman sends them as CNI_ARGS "IgnoreUnknown=1;K8S_POD_NAME=<name>;IP=<address>;MAC=<mac>".
    network = podman.create_network()
    base = network["subnets"][0]["subnet"].rsplit(".", 1)[0]
    wanted, mac = f"{base}.77", "02:53:77:00:00:77"
    container = podman.run(network["name"], "sleep", "600", options=("--ip", wanted, "--mac-address", mac))
    assert podman.addresses(container) == [wanted]
    assert f"link/ether {mac}" in podman.exec(container, "ip", "-o", "link", "show", "eth0")
    assert leases(network["name"]) == [wanted]
    # podman parsed our result: its view of the attachment matches the kernel's.
    seen = json.loads(podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", container))
    assert seen[network["name"]]["IPAddress"] == wanted and seen[network["name"]]["MacAddress"] == mac, seen
    assert seen[network["name"]]["Gateway"] == f"{base}.1", seen
    podman("rm", "-f", "-t", "0", container)
    assert_nothing_left(network, container, [wanted])


def test_podman_stop_releases_and_start_reattaches(podman):
    network = podman.create_network()
    container = podman.run(network["name"], "sleep", "600")
    first = podman.addresses(container)
    podman("stop", "-t", "0", container)  # podman tears the network down (DEL) when a container stops
    assert leases(network["name"]) == [] and veths_on_bridge(network["network_interface"]) == []
    podman("start", container)
    again = podman.addresses(container)
    assert len(again) == 1 and leases(network["name"]) == again
    podman("rm", "-f", "-t", "0", container)
    assert_nothing_left(network, container, first + again)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_podman_dual_stack_network(podman):
    v6_subnet = f"fd00:5c:{random.randint(0, 0xffff):x}::/64"
    network = podman.create_network(extra=("--ipv6", "--subnet", v6_subnet))
    conflist = podman.conflist(network["name"])
    assert len(conflist["plugins"][0]["ipam"]["ranges"]) == 2
    first = podman.run(network["name"], "sleep", "600")
    second = podman.run(network["name"], "sleep", "600")
    v6 = []
    for container in (first, second):
        out = podman.exec(container, "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global")
        v6 += [line.split()[3].split("/")[0] for line in out.splitlines()]
    assert len(v6) == 2 and all(ipaddress.ip_address(a) in ipaddress.ip_network(v6_subnet) for a in v6), v6
    assert len(leases(network["name"])) == 4, leases(network["name"])
    out = podman.exec(first, "ping", "-6", "-c", "2", "-W", "3", v6[1])
    assert "2 packets received" in out, out
    v4 = podman.addresses(second)
    out = podman.exec(first, "ping", "-c", "2", "-W", "3", v4[0])
    assert "2 packets received" in out, out
    podman("rm", "-f", "-t", "0", first, second)
    assert_nothing_left(network, first, v4 + v6)
    assert_nothing_left(network, second, [])


def test_podman_published_port_reaches_httpd(podman):
    network = podman.create_network()
    port = free_port()
    container = podman.run(network["name"], "httpd", "-f", "-p", "80", "-h", "/www",
                           options=("-p", f"127.0.0.1:{port}:80"))
    address = podman.addresses(container)
    body = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # httpd may still be starting
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=3).read()
            break
        except OSError as error:
            body = error
            time.sleep(0.3)
    assert body == b"swift-cni client test\n", f"127.0.0.1:{port} -> container {address}: {body!r}"
    assert firewall_mentions(container), "portmap/bridge rules for the container are missing"
    podman("rm", "-f", "-t", "0", container)
    assert_nothing_left(network, container, address)
    assert firewall_mentions(f"--dport {port} ") == [], f"DNAT for port {port} left"


def test_podman_bridge_with_static_ipam(podman):
    # Podman cannot create a static-IPAM network, so the conflist is written by hand in podman's
    # shape (0.4.0, same chain) on the bridge of a podman network; a container on each pings the other.
    dynamic = podman.create_network()
    subnet = dynamic["subnets"][0]["subnet"]
    base = subnet.rsplit(".", 1)[0]
    static_address = f"{base}.200"
    name = dynamic["name"] + "s"
    podman.add_conflist({
        "cniVersion": "0.4.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": dynamic["network_interface"], "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "static", "addresses": [{"address": f"{static_address}/24", "gateway": f"{base}.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": ""},
            {"type": "tuning"},
        ],
    }, dynamic["network_interface"], subnet)
    static = podman.run(name, "sleep", "600")
    other = podman.run(dynamic["name"], "sleep", "600")
    assert podman.addresses(static) == [static_address]
    routes = podman.exec(static, "ip", "-4", "route")
    assert f"default via {base}.1" in routes, routes
    other_address = podman.addresses(other)
    out = podman.exec(static, "ping", "-c", "2", "-W", "3", other_address[0])
    assert "2 packets received" in out, out
    podman("rm", "-f", "-t", "0", static, other)
    assert_nothing_left(dynamic, static, [static_address] + other_address)
    assert leases(name) == [], "static IPAM must not write host-local leases"


def test_podman_network_connect_and_disconnect(podman):
    first, second = podman.create_network(), podman.create_network()
    container = podman.run(first["name"], "sleep", "600")
    podman("network", "connect", second["name"], container)
    added = podman.addresses(container, "eth1")
    assert len(added) == 1 and leases(second["name"]) == added
    assert len(veths_on_bridge(second["network_interface"])) == 1
    podman("network", "disconnect", second["name"], container)
    links = podman.exec(container, "ip", "-o", "link")
    assert "eth1" not in links, links
    assert_nothing_left(second, "", added)
    assert podman.addresses(container) != [], "eth0 must survive the disconnect of eth1"
    first_address = podman.addresses(container)
    podman("rm", "-f", "-t", "0", container)
    assert_nothing_left(first, container, first_address)


@pytest.mark.parametrize("half", ["lower", "upper", "whole"])
def test_podman_ip_range_is_served_without_network_or_broadcast_address(podman, half):
    # `docker network create --subnet S --ip-range R` (podman's API): podman writes rangeStart =
    # first address of R + 1 and rangeEnd = last address of R, which for the upper half (or R =
    # S) is S's broadcast address. On a /28: lower .0/29, upper .8/29, whole .0/28.
    base = free_subnet().rsplit(".", 1)[0]
    ip_range = {"lower": f"{base}.0/29", "upper": f"{base}.8/29", "whole": f"{base}.0/28"}[half]
    network = podman.create_network(subnet=f"{base}.0/28", extra=("--ip-range", ip_range))
    ipam = podman.conflist(network["name"])["plugins"][0]["ipam"]
    end = {"lower": 7, "upper": 15, "whole": 15}[half]
    assert ipam["ranges"][0][0]["rangeEnd"] == f"{base}.{end}", ipam
    first = {"lower": 2, "upper": 9, "whole": 2}[half]  # .1 is the gateway
    expected = [f"{base}.{i}" for i in range(first, min(end, 14) + 1)]
    containers, got = [], []
    for _ in range(len(expected) if half != "whole" else 2):
        containers.append(podman.run(network["name"], "sleep", "600"))
        got += podman.addresses(containers[-1])
    if half == "whole":
        assert got == expected[:2]
    else:
        assert sorted(got, key=ipaddress.ip_address) == expected
        # The range is used up: the next start is refused, and .15 (broadcast) never appears.
        refused = podman("run", "-d", "--network", network["name"], "--rootfs", podman.rootfs, "sleep", "600",
                         check=False)
        assert refused.returncode != 0 and "no IP addresses available" in refused.stderr, refused.stderr
    assert f"{base}.15" not in leases(network["name"]) and f"{base}.0" not in leases(network["name"])
    podman("rm", "-a", "-f", "-t", "0")
    assert_nothing_left(network, containers[0], got)


def test_podman_sees_the_mac_from_ip_and_an_excluded_address_is_skipped(podman):
    # A hand-written conflist in podman's shape with our keys: macFromIP on the bridge, exclude in
    # the range. podman reads the MAC from our result (its inspect shows it).
    dynamic = podman.create_network()
    subnet = dynamic["subnets"][0]["subnet"]
    base = subnet.rsplit(".", 1)[0]
    name = dynamic["name"] + "m"
    podman.add_conflist({
        "cniVersion": "0.4.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": dynamic["network_interface"], "isGateway": True, "macFromIP": True,
             "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                      "ranges": [[{"subnet": subnet, "gateway": f"{base}.1", "exclude": [f"{base}.2-{base}.9"]}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": ""},
            {"type": "tuning"},
        ],
    }, dynamic["network_interface"], subnet)
    container = podman.run(name, "sleep", "600")
    address = podman.addresses(container)
    assert address == [f"{base}.10"], address
    mac = "02:42:" + ":".join(f"{int(octet):02x}" for octet in address[0].split("."))
    assert f"link/ether {mac}" in podman.exec(container, "ip", "-o", "link", "show", "eth0")
    seen = json.loads(podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", container))
    assert seen[name]["MacAddress"] == mac, seen
    podman("rm", "-f", "-t", "0", container)
    assert leases(name) == []


def test_podman_with_a_hand_written_ptp_network(podman):
    """ptp under podman's chain (ptp, portmap, firewall, tuning): two containers on /32 links
    reach each other through the host, and `podman rm` leaves no lease, veth, route or rule."""
    subnet = free_subnet()
    name = unique("swpp-", 16)
    podman.add_conflist({
        "cniVersion": "0.4.0", "name": name,
        "plugins": [
            {"type": "ptp", "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": ""},
            {"type": "tuning"},
        ],
    }, None, subnet)
    first = podman.run(name, "sleep", "600")
    second = podman.run(name, "sleep", "600")
    first_ip, second_ip = podman.addresses(first), podman.addresses(second)
    assert len(first_ip) == 1 and len(second_ip) == 1
    assert sorted(leases(name)) == sorted(first_ip + second_ip)
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))
    routes = podman.exec(first, "ip", "-4", "route")
    assert f"default via {gateway}" in routes and f"{gateway} dev eth0" in routes, routes
    out = podman.exec(first, "ping", "-c", "2", "-W", "3", second_ip[0])
    assert "2 packets received" in out, out
    host_routes = sh("ip", "-4", "route", "show", "scope", "host")
    assert all(ip in host_routes for ip in first_ip + second_ip), host_routes
    podman("rm", "-f", "-t", "0", first, second)
    assert leases(name) == [], f"leases left in /var/lib/cni/networks/{name}"
    host_routes = sh("ip", "-4", "route", "show", "scope", "host")
    assert not any(f"{ip} dev veth" in host_routes for ip in first_ip + second_ip), host_routes
    left = firewall_mentions(*(f"{ip}/32" for ip in first_ip + second_ip))
    assert left == [], "firewall rules left:\n" + "\n".join(left)


def test_podman_runs_our_tuning_and_rm_restores_nothing_left(podman, tmp_path):
    """podman's chain with tuning keys (ours: CNI_PATH holds our tuning, only firewall is the
    reference's): the sysctl and MTU reach the container, the backup is written under dataDir and
    `podman rm` (tuning DEL before the bridge removes the veth) leaves no backup behind."""
    dynamic = podman.create_network()
    subnet = dynamic["subnets"][0]["subnet"]
    name = dynamic["name"] + "t"
    data_dir = tmp_path / "tuning"
    podman.add_conflist({
        "cniVersion": "0.4.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": dynamic["network_interface"], "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": ""},
            {"type": "tuning", "dataDir": str(data_dir), "mtu": 1400,
             "sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1"}},
        ],
    }, dynamic["network_interface"], subnet)
    container = podman.run(name, "sleep", "600")
    assert "mtu 1400" in podman.exec(container, "ip", "-o", "link", "show", "eth0")
    assert podman.exec(container, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_filter").strip() == "1"
    # The reference's backup, and our sidecar naming the network (for GC, see Backup.ownerFileName).
    backups = list(data_dir.glob("*.json"))
    assert len(backups) == 1 and backups[0].name.endswith("_eth0.json")
    assert [p.name for p in data_dir.iterdir() if p.suffix == ".net"] == [backups[0].name[:-5] + ".net"]
    assert json.loads(backups[0].read_text()) == {"mtu": 1500}
    addresses = podman.addresses(container)
    podman("rm", "-f", "-t", "0", container)
    assert list(data_dir.iterdir()) == []
    assert_nothing_left(dynamic, container, addresses)
