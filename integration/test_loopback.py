"""loopback: lo up (ADD), down (DEL), CHECK; the result as the reference prints it."""

import json
import subprocess

import pytest

from cnitest import REF_DIR, run_plugin


def config(version="1.0.0", **keys):
    return {"cniVersion": version, "name": "lo-net", "type": "loopback", **keys}


def lo_flags(ns):
    out = ns.run("ip", "-j", "link", "show", "lo")
    return json.loads(out)[0]["flags"]


@pytest.fixture
def fresh(netns_factory):
    ns = netns_factory("swlo")
    ns.run("ip", "link", "set", "lo", "down")
    return ns


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del(fresh, version):
    run = run_plugin("loopback", "ADD", config(version), netns=fresh.path, ifname="ignored0")
    assert run.ok, str(run)
    assert "UP" in lo_flags(fresh)
    result = run.json
    assert result["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": fresh.path}]
    addresses = [ip["address"] for ip in result["ips"]]
    assert addresses == ["127.0.0.1/8", "::1/128"]
    assert all(ip["interface"] == 0 for ip in result["ips"])
    if version >= "0.4.0":
        assert run_plugin("loopback", "CHECK", config(version), netns=fresh.path).ok
    assert run_plugin("loopback", "DEL", config(version), netns=fresh.path).ok
    assert "UP" not in lo_flags(fresh)
    if version >= "0.4.0":
        check = run_plugin("loopback", "CHECK", config(version), netns=fresh.path)
        assert not check.ok and check.json["msg"] == "loopback interface is down"


def test_legacy_version_result(fresh):
    run = run_plugin("loopback", "ADD", config("0.2.0"), netns=fresh.path)
    assert run.ok and run.json["ip4"]["ip"] == "127.0.0.1/8" and run.json["ip6"]["ip"] == "::1/128"


def test_prev_result_passes_through(fresh):
    previous = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": fresh.path}],
                "ips": [{"interface": 0, "address": "10.1.2.3/24"}]}
    run = run_plugin("loopback", "ADD", config(prevResult=previous), netns=fresh.path)
    assert run.ok and run.json["ips"] == previous["ips"] and run.json["interfaces"] == previous["interfaces"]
    assert "UP" in lo_flags(fresh)


def test_del_tolerates_missing_netns(tmp_path):
    assert run_plugin("loopback", "DEL", config(), netns="").ok
    assert run_plugin("loopback", "DEL", config(), netns="/run/netns/no-such-netns-x").ok
    unmounted = tmp_path / "netns"
    unmounted.write_text("")
    assert run_plugin("loopback", "DEL", config(), netns=str(unmounted)).ok


def test_add_on_missing_netns_fails():
    run = run_plugin("loopback", "ADD", config(), netns="/run/netns/no-such-netns-x")
    assert not run.ok and run.json["code"] == 3


def test_same_result_as_reference(fresh, netns_factory):
    reference = REF_DIR / "loopback"
    if not reference.exists():
        pytest.skip(f"reference loopback not installed at {reference}")
    other = netns_factory("swlo")
    ours = run_plugin("loopback", "ADD", config("1.0.0"), netns=fresh.path)
    theirs = run_plugin(str(reference), "ADD", config("1.0.0"), netns=other.path)
    assert theirs.ok, str(theirs)
    for result in (ours.json, theirs.json):
        result["interfaces"][0]["sandbox"] = "X"
        if result.get("dns") == {}:
            del result["dns"]  # the v1.1.1-era lib printed an empty dns; newer ones omit it
    assert ours.json == theirs.json
