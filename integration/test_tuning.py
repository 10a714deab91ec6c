"""tuning: ADD/CHECK/DEL exec'd as a runtime does, against a container namespace this test creates.

The container holds one end of a veth pair (the other end stays in the container too: tuning
touches only CNI_IFNAME). The kernel's state is read independently (`ip -j -d link`, the
sysctl files under /proc/sys/net in the namespace), and the backup file under a private
dataDir byte for byte. The reference (/usr/lib/cni/tuning, v1.1.1) is driven the same way for
the mixed-DEL tests: either restores what the other saved.
"""

import json
import os
from pathlib import Path

import pytest

from cnitest import REF_DIR, run_plugin, sh, unique

REFERENCE_TUNING = REF_DIR / "tuning"
ALLOWLIST = Path("/etc/cni/tuning/allowlist.conf")


class Container:
    def __init__(self, netns, ifname="eth0"):
        self.ns = netns
        self.ifname = ifname
        netns.run("ip", "link", "add", ifname, "type", "veth", "peer", "name", "peer0")
        netns.run("ip", "link", "set", ifname, "up")

    def link(self):
        return json.loads(self.ns.run("ip", "-j", "-d", "link", "show", "dev", self.ifname))[0]

    def sysctl(self, path):
        return self.ns.run("cat", "/proc/sys/" + path).strip()


@pytest.fixture
def container(netns):
    return Container(netns)


def config(data_dir, container, **keys):
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": container.ifname, "mac": container.link()["address"],
                            "sandbox": container.ns.path}],
            "ips": [{"address": "10.77.0.5/24", "interface": 0}]}
    conf = {"cniVersion": "1.0.0", "name": unique("tun", 10), "type": "tuning", "dataDir": str(data_dir),
            "prevResult": prev}
    conf.update(keys)
    return conf


def run(command, conf, container, plugin="tuning", containerid="ctr1", **kwargs):
    return run_plugin(plugin, command, conf, netns=container.ns.path, ifname=container.ifname,
                      containerid=containerid, **kwargs)


ALL = {"mac": "c2:11:22:33:44:55", "mtu": 1400, "promisc": True, "allmulti": True, "txQLen": 500,
       "sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1", "net.ipv4.conf.IFNAME.arp_ignore": "2"}}


def test_add_check_del_changes_and_restores_the_kernel_state(tmp_path, container):
    before = container.link()
    conf = config(tmp_path, container, **ALL)
    add = run("ADD", conf, container)
    assert add.ok, str(add)
    assert add.json["interfaces"][0]["mac"] == "c2:11:22:33:44:55"
    link = container.link()
    assert link["address"] == "c2:11:22:33:44:55"
    assert link["mtu"] == 1400 and link["txqlen"] == 500
    assert "PROMISC" in link["flags"] and "ALLMULTI" in link["flags"]
    assert container.sysctl("net/ipv4/conf/eth0/arp_filter") == "1"
    assert container.sysctl("net/ipv4/conf/eth0/arp_ignore") == "2"
    backup = tmp_path / "ctr1_eth0.json"
    assert backup.read_text() == (
        '{\n "mac": "%s",\n "promisc": false,\n "mtu": %d,\n "allmulti": false,\n "txQLen": %d\n}'
        % (before["address"], before["mtu"], before["txqlen"]))
    assert backup.stat().st_mode & 0o777 == 0o600

    conf["prevResult"] = add.json
    check = run("CHECK", conf, container)
    assert check.ok, str(check)
    container.ns.run("ip", "link", "set", "eth0", "mtu", "1300")
    check = run("CHECK", conf, container)
    assert not check.ok and check.json["code"] == 105 and "MTU of eth0 is 1400" in check.json["msg"]

    delete = run("DEL", conf, container)
    assert delete.ok, str(delete)
    link = container.link()
    assert link["address"] == before["address"] and link["mtu"] == before["mtu"]
    assert link["txqlen"] == before["txqlen"]
    assert "PROMISC" not in link["flags"] and "ALLMULTI" not in link["flags"]
    assert not backup.exists()
    assert run("DEL", conf, container).ok


def test_ifname_with_dots_is_substituted_after_the_dots(tmp_path, netns):
    dotted = Container(netns, ifname="eth0.5")
    conf = config(tmp_path, dotted, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1"})
    add = run("ADD", conf, dotted)
    assert add.ok, str(add)
    assert dotted.sysctl("net/ipv4/conf/eth0.5/arp_filter") == "1"
    conf["prevResult"] = add.json
    assert run("CHECK", conf, dotted).ok
    # Nothing but sysctls: no backup is written.
    assert list(tmp_path.iterdir()) == []


def test_bad_sysctls_change_nothing(tmp_path, container):
    for sysctl in ({"net.ipv4.conf.IFNAME.arp_filter": "1", "kernel.hostname": "x"},
                   {"net.ipv4.conf.IFNAME.arp_filter": "1", "net.no_such_key": "1"}):
        add = run("ADD", config(tmp_path, container, mtu=1300, sysctl=sysctl), container)
        assert not add.ok
    # The second fails writing a key that does not exist: the first key was written (as the
    # reference, sysctls come first and are not undone), but no link attribute changed.
    assert container.link()["mtu"] == 1500
    assert list(tmp_path.iterdir()) == []
    duplicate = config(tmp_path, container)
    text = json.dumps(duplicate)[:-1] + ', "sysctl": {"net.core.somaxconn": "1", "net.core.somaxconn": "2"}}'
    add = run("ADD", text, container)
    assert not add.ok and add.json["code"] == 7 and "duplicated sysctl keys" in add.json["msg"]


def test_del_without_the_namespace_removes_the_backup(tmp_path, netns_factory):
    ns = netns_factory("swtun")
    container = Container(ns)
    conf = config(tmp_path, container, mtu=1400)
    assert run("ADD", conf, container).ok
    assert (tmp_path / "ctr1_eth0.json").exists()
    sh("ip", "netns", "del", ns.name)
    delete = run_plugin("tuning", "DEL", conf, netns=ns.path, containerid="ctr1")
    assert delete.ok, str(delete)
    assert not (tmp_path / "ctr1_eth0.json").exists()


@pytest.fixture
def allowlist():
    if ALLOWLIST.exists():
        pytest.skip(f"{ALLOWLIST} exists on this host; not overwriting it")
    created_dir = not ALLOWLIST.parent.exists()
    ALLOWLIST.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield ALLOWLIST
    finally:
        ALLOWLIST.unlink(missing_ok=True)
        if created_dir:
            os.rmdir(ALLOWLIST.parent)


def test_the_allowlist_file_admits_only_its_patterns(tmp_path, container, allowlist):
    allowlist.write_text("^net\\.ipv4\\.conf\\.IFNAME\\.arp_filter$\n\n")
    ok = run("ADD", config(tmp_path, container, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1"}), container)
    assert ok.ok, str(ok)
    refused = run("ADD", config(tmp_path, container, sysctl={"net.ipv4.conf.IFNAME.arp_ignore": "1"}), container)
    assert not refused.ok and "is not allowed" in refused.json["msg"]
    assert container.sysctl("net/ipv4/conf/eth0/arp_ignore") == "0"


REFERENCE_KEYS = {"mac": "c2:11:22:33:44:66", "mtu": 1300, "promisc": True, "allmulti": True}


@pytest.mark.skipif(not REFERENCE_TUNING.exists(), reason="reference tuning not installed")
@pytest.mark.parametrize("adder,deleter", [("ours", "reference"), ("reference", "ours")])
def test_mixed_del_restores_what_the_other_saved(tmp_path, container, adder, deleter):
    plugins = {"ours": "tuning", "reference": str(REFERENCE_TUNING)}
    before = container.link()
    conf = config(tmp_path, container, **REFERENCE_KEYS)
    add = run("ADD", conf, container, plugin=plugins[adder])
    assert add.ok, str(add)
    assert container.link()["address"] == "c2:11:22:33:44:66"
    backup = tmp_path / "ctr1_eth0.json"
    assert json.loads(backup.read_text()) == {"mac": before["address"], "promisc": False, "mtu": before["mtu"],
                                              "allmulti": False}
    conf["prevResult"] = add.json
    delete = run("DEL", conf, container, plugin=plugins[deleter])
    assert delete.ok, str(delete)
    link = container.link()
    assert link["address"] == before["address"] and link["mtu"] == before["mtu"]
    assert "PROMISC" not in link["flags"] and "ALLMULTI" not in link["flags"]
    assert not backup.exists()


def test_the_conf_example_applies_as_given(tmp_path, container):
    example = json.loads((Path(__file__).resolve().parent.parent / "conf-examples/tuning-sysctl.conflist").read_text())
    entry = next(p for p in example["plugins"] if p["type"] == "tuning")
    conf = config(tmp_path, container, **entry)
    conf["cniVersion"] = example["cniVersion"]
    add = run("ADD", conf, container)
    assert add.ok, str(add)
    assert container.sysctl("net/ipv4/conf/eth0/arp_filter") == "1"
    assert container.sysctl("net/core/somaxconn") == "1024"
    link = container.link()
    assert link["mtu"] == 1400 and link["txqlen"] == 500
    assert run("DEL", conf, container).ok
    assert container.link()["mtu"] == 1500


def gc_config(data_dir, name, valid):
    return {"cniVersion": "1.1.0", "name": name, "type": "tuning", "dataDir": str(data_dir),
            "cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]}


@pytest.mark.skipif(not REFERENCE_TUNING.exists(), reason="reference tuning not installed")
def test_gc_removes_only_this_networks_stale_backups(tmp_path, netns_factory):
    kept, stale, foreign = (Container(netns_factory("swtgc")) for _ in range(3))
    conf = config(tmp_path, kept, mtu=1400)
    name = conf["name"]
    assert run("ADD", conf, kept, containerid="kept").ok
    assert run("ADD", config(tmp_path, stale, mtu=1400, name=name), stale, containerid="stale").ok
    # The reference writes no sidecar: GC cannot tell its backup's network, and keeps it.
    assert run("ADD", config(tmp_path, foreign, mtu=1400, name=name), foreign, containerid="ref",
               plugin=str(REFERENCE_TUNING)).ok
    assert (tmp_path / "stale_eth0.net").read_text() == name

    gc = run_plugin("tuning", "GC", gc_config(tmp_path, name, [("kept", "eth0")]))
    assert gc.ok, str(gc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept_eth0.json", "kept_eth0.net", "ref_eth0.json"]
    # GC restores nothing (it cannot know the namespace); the kept attachment's DEL still does.
    assert stale.link()["mtu"] == 1400
    assert run("DEL", conf, kept, containerid="kept").ok
    assert kept.link()["mtu"] == 1500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref_eth0.json"]
