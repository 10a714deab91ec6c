"""containerd's `ctr run --cni` drives our plugins: ADD gives the container an address from our
host-local, and the DEL ctr sends after the task exits — with an EMPTY CNI_NETNS, since the
container's netns is gone by then — releases the lease and removes the bridge's ipMasq rules.

containerd runs privately (own root/state/socket under a temp dir) inside a private mount
namespace where /etc/cni/net.d and /opt/cni/bin are bind mounts of temp dirs; the image is made
here from busybox-static as an OCI archive and imported with `ctr image import`."""

import ipaddress
import json
import shutil
import subprocess
import time

import pytest

from clients.common import (announce, assemble_plugin_dir, delete_link, firewall_mentions, free_subnet, leases,
                            LEASE_ROOT, plugins_under_test, purge_firewall, reference_gap, remove_lease_dir,
                            veths_on_bridge)
from clients.containerd import Containerd
from clients.images import IMAGE_NAME, build_rootfs, write_oci_archive
from cnitest import unique


@pytest.fixture(scope="module")
def containerd(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("containerd")
    # Only our plugins in CNI_PATH: the chain below is bridge + portmap, no reference plugin.
    engine = Containerd(base, assemble_plugin_dir(base / "plugins", with_reference=False))
    try:
        engine.start()
        archive = write_oci_archive(build_rootfs(base / "rootfs"), base / "busybox-oci.tar")
        engine.ctr("image", "import", "--snapshotter", "native", archive)
        announce(request, f"containerd/ctr {engine.version()} (private instance) with {plugins_under_test()}")
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def network(containerd):
    """A conflist as the first (only) file ctr sees, with a unique name, bridge and test range."""
    name, bridge, subnet = unique("swct-", 16), unique("swct", 13), free_subnet()
    conflist = {
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    path = containerd.net_dir / "10-swift-cni.conflist"
    path.write_text(json.dumps(conflist))
    try:
        yield {"name": name, "bridge": bridge, "subnet": subnet}
    finally:
        path.unlink(missing_ok=True)
        delete_link(bridge)
        remove_lease_dir(name)
        purge_firewall(f'"{name}"')
        purge_firewall(subnet.rsplit(".", 1)[0] + ".")


def test_ctr_run_cni_add_then_del_with_empty_netns(containerd, network, tmp_path):
    sync = tmp_path / "sync"
    sync.mkdir()
    container = unique("swctc-", 16)
    runtime_id = f"default-{container}"  # ctr names the CNI attachment <namespace>-<container>
    script = "ip -o -4 addr show eth0 > /sync/addr; ip -4 route > /sync/routes; " \
             "while [ ! -e /sync/go ]; do sleep 0.1; done"
    ctr = containerd.ctr_popen("run", "--rm", "--cni", "--snapshotter", "native",
                               "--mount", f"type=bind,src={sync},dst=/sync,options=rbind:rw",
                               IMAGE_NAME, container, "sh", "-c", script,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (sync / "routes").exists() and ctr.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not (sync / "routes").exists():
            ctr.kill()
            out, err = ctr.communicate()
            pytest.fail(f"ctr run --cni did not start the container: rc={ctr.returncode} {err.decode()}\n"
                        f"plugin calls: {containerd.calls()}\n{containerd.log_tail()}")
        time.sleep(0.1)  # the routes file may still be being written
        fields = (sync / "addr").read_text().split()
        address = fields[fields.index("inet") + 1].split("/")[0]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(network["subnet"])
        assert f"default via {str(next(ipaddress.ip_network(network['subnet']).hosts()))}" in (sync / "routes").read_text()
        assert leases(network["name"]) == [address]
        lease = (LEASE_ROOT / network["name"] / address).read_text()
        assert lease.split()[0] == runtime_id, f"lease content {lease!r}"
        assert len(veths_on_bridge(network["bridge"])) == 1
        assert firewall_mentions(runtime_id), "the bridge's ipMasq rules for the container are missing"
        adds = [c for c in containerd.calls() if c[0] == "bridge" and c[1] == "ADD"]
        assert len(adds) == 1 and adds[0][2].startswith("/proc/"), f"ADD calls: {adds}"
    finally:
        (sync / "go").touch()
        out, err = ctr.communicate(timeout=60)
    assert ctr.returncode == 0, f"ctr run failed: {err.decode()}"

    calls = containerd.calls()
    # Our bridge delegated to our host-local through CNI_PATH, for ADD and for DEL.
    assert [c[1] for c in calls if c[0] == "host-local"] == ["ADD", "DEL"], calls
    # Our portmap ran in the chain (ctr publishes no ports: it passes prevResult through).
    assert [c[1] for c in calls if c[0] == "portmap"] == ["ADD", "DEL"], calls
    dels = [c for c in calls if c[0] == "bridge" and c[1] == "DEL"]
    assert dels and all(c[2] == "" for c in dels), f"ctr was expected to send DEL with an empty CNI_NETNS: {dels}"
    assert leases(network["name"]) == [], "DEL with empty CNI_NETNS must release the lease"
    assert veths_on_bridge(network["bridge"]) == []
    left = firewall_mentions(runtime_id, f"{address}/32")
    if left:
        reference_gap("bridge keeps ipMasq rules when DEL has no netns (plugins#810)")
    assert left == [], "DEL with empty CNI_NETNS left firewall rules:\n" + "\n".join(left)


@pytest.fixture
def ptp_network(containerd):
    """A ptp conflist as the only file ctr sees."""
    name, subnet = unique("swctp-", 16), free_subnet()
    conflist = {
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "ptp", "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        ],
    }
    path = containerd.net_dir / "10-swift-cni.conflist"
    path.write_text(json.dumps(conflist))
    try:
        yield {"name": name, "subnet": subnet}
    finally:
        path.unlink(missing_ok=True)
        remove_lease_dir(name)
        purge_firewall(f'"{name}"')
        purge_firewall(subnet.rsplit(".", 1)[0] + ".")


def test_ctr_run_cni_with_a_ptp_conflist(containerd, ptp_network, tmp_path):
    """ADD gives the container a ptp link (gateway on-link, host route to it); the DEL ctr sends
    with an empty CNI_NETNS releases the lease and removes the masquerade rules (the reference
    ptp leaks them there)."""
    sync = tmp_path / "sync"
    sync.mkdir()
    container = unique("swctp-", 16)
    runtime_id = f"default-{container}"
    gateway = str(next(ipaddress.ip_network(ptp_network["subnet"]).hosts()))
    script = (f"ip -o -4 addr show eth0 > /sync/addr; ip -4 route > /sync/routes; "
              f"ping -c 1 -W 2 {gateway} > /sync/ping 2>&1; touch /sync/ready; "
              "while [ ! -e /sync/go ]; do sleep 0.1; done")
    ctr = containerd.ctr_popen("run", "--rm", "--cni", "--snapshotter", "native",
                               "--mount", f"type=bind,src={sync},dst=/sync,options=rbind:rw",
                               IMAGE_NAME, container, "sh", "-c", script,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (sync / "ready").exists() and ctr.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not (sync / "ready").exists():
            ctr.kill()
            out, err = ctr.communicate()
            pytest.fail(f"ctr run --cni did not start the container: rc={ctr.returncode} {err.decode()}\n"
                        f"plugin calls: {containerd.calls()}\n{containerd.log_tail()}")
        fields = (sync / "addr").read_text().split()
        address = fields[fields.index("inet") + 1].split("/")[0]
        routes = (sync / "routes").read_text()
        assert f"default via {gateway}" in routes and f"{gateway} dev eth0" in routes, routes
        assert " 0% packet loss" in (sync / "ping").read_text(), (sync / "ping").read_text()
        assert leases(ptp_network["name"]) == [address]
        host_route = subprocess.run(["ip", "-4", "route", "show", address], capture_output=True, text=True).stdout
        assert "dev veth" in host_route and "scope host" in host_route, host_route
        assert firewall_mentions(runtime_id), "ptp's ipMasq rules for the container are missing"
    finally:
        (sync / "go").touch()
        out, err = ctr.communicate(timeout=60)
    assert ctr.returncode == 0, f"ctr run failed: {err.decode()}"
    dels = [c for c in containerd.calls() if c[0] == "ptp" and c[1] == "DEL"]
    assert dels and all(c[2] == "" for c in dels), f"ctr was expected to send DEL with an empty CNI_NETNS: {dels}"
    assert leases(ptp_network["name"]) == [], "DEL with empty CNI_NETNS must release the lease"
    left = firewall_mentions(runtime_id, f"{address}/32")
    if left:
        reference_gap("ptp keeps ipMasq rules when DEL has no netns")
    assert left == [], "DEL with empty CNI_NETNS left firewall rules:\n" + "\n".join(left)
    deadline = time.monotonic() + 10  # the host veth goes with the container's netns (async)
    while "dev veth" in subprocess.run(["ip", "-4", "route", "show", address], capture_output=True,
                                       text=True).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "dev veth" not in subprocess.run(["ip", "-4", "route", "show", address], capture_output=True,
                                            text=True).stdout


@pytest.fixture
def shaped_network(containerd, tmp_path):
    """bridge + portmap + tuning + bandwidth, all ours, as the only conflist ctr sees."""
    name, bridge, subnet = unique("swcts-", 16), unique("swcs", 13), free_subnet()
    data_dir = tmp_path / "tuning"
    conflist = {
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "tuning", "mtu": 1400, "dataDir": str(data_dir)},
            {"type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 80000,
             "egressRate": 8000000, "egressBurst": 80000},
        ],
    }
    path = containerd.net_dir / "10-swift-cni.conflist"
    path.write_text(json.dumps(conflist))
    try:
        yield {"name": name, "bridge": bridge, "subnet": subnet, "data_dir": data_dir}
    finally:
        path.unlink(missing_ok=True)
        delete_link(bridge)
        remove_lease_dir(name)
        purge_firewall(f'"{name}"')
        purge_firewall(subnet.rsplit(".", 1)[0] + ".")


def test_ctr_run_cni_with_tuning_and_bandwidth_leaves_nothing(containerd, shaped_network, tmp_path):
    """ctr's DEL comes with an empty CNI_NETNS: our bandwidth still removes its ifb (by name) and
    our tuning its backup (the reference leaks the backup then)."""
    import hashlib
    sync = tmp_path / "sync"
    sync.mkdir()
    container = unique("swctb-", 16)
    runtime_id = f"default-{container}"
    ifb = "bwp" + hashlib.sha512((shaped_network["name"] + runtime_id).encode()).hexdigest()[:12]
    script = "ip -o link show eth0 > /sync/link; while [ ! -e /sync/go ]; do sleep 0.1; done"
    ctr = containerd.ctr_popen("run", "--rm", "--cni", "--snapshotter", "native",
                               "--mount", f"type=bind,src={sync},dst=/sync,options=rbind:rw",
                               IMAGE_NAME, container, "sh", "-c", script,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (sync / "link").exists() and ctr.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not (sync / "link").exists():
            ctr.kill()
            out, err = ctr.communicate()
            pytest.fail(f"ctr run --cni did not start the container: rc={ctr.returncode} {err.decode()}\n"
                        f"plugin calls: {containerd.calls()}\n{containerd.log_tail()}")
        time.sleep(0.1)
        assert "mtu 1400" in (sync / "link").read_text()
        # The backup in the reference's format, and our sidecar naming the network (for GC).
        assert sorted(p.name for p in shaped_network["data_dir"].iterdir()) == [f"{runtime_id}_eth0.json",
                                                                              f"{runtime_id}_eth0.net"]
        links = {l["ifname"]: l for l in json.loads(subprocess.run(
            ["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, check=True).stdout)}
        assert links[ifb]["linkinfo"]["info_kind"] == "ifb"
        veth = veths_on_bridge(shaped_network["bridge"])[0]
        qdiscs = json.loads(subprocess.run(["tc", "-j", "qdisc", "show", "dev", veth], capture_output=True,
                                           text=True, check=True).stdout)
        assert any(q["kind"] == "tbf" and q["options"]["rate"] == 1000000 for q in qdiscs), qdiscs
    finally:
        (sync / "go").touch()
        out, err = ctr.communicate(timeout=60)
    assert ctr.returncode == 0, f"ctr run failed: {err.decode()}"
    calls = containerd.calls()
    assert [c[1] for c in calls if c[0] == "tuning"] == ["ADD", "DEL"], calls
    assert [c[1] for c in calls if c[0] == "bandwidth"] == ["ADD", "DEL"], calls
    left = subprocess.run(["ip", "link", "show", ifb], capture_output=True)
    assert left.returncode != 0, f"ifb {ifb} left after DEL"
    assert list(shaped_network["data_dir"].iterdir()) == [], "tuning's backup left after DEL"
    assert leases(shaped_network["name"]) == []
    assert veths_on_bridge(shaped_network["bridge"]) == []
