"""static, exec'd as a runtime does: the reference's cases, plus the validation it skips."""

import pytest

from cnitest import REF_DIR, run_plugin

NETNS = "/var/run/netns/ipam-test-unused"  # IPAM plugins never enter it; the skel needs it set
REF = REF_DIR / "static"


def conf(version="1.0.0", **ipam):
    return {"cniVersion": version, "name": "mynet", "type": "ipvlan", "ipam": {"type": "static", **ipam}}


def run(command, config, plugin="static", **kw):
    kw.setdefault("netns", NETNS)
    return run_plugin(plugin, command, config, **kw)


BASIC = dict(
    addresses=[{"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
               {"address": "3ffe:ffff:0:1ff::1/64", "gateway": "3ffe:ffff:0:1ff::fffe"}],
    routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}, {"dst": "3ffe:ffff:0:01ff::1/64"}],
    dns={"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]})


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_allocates_and_releases_addresses_with_add_del(version):
    added = run("ADD", conf(version, **BASIC))
    assert added.ok, added
    assert added.json["cniVersion"] == version
    assert [(ip["address"], ip["gateway"]) for ip in added.json["ips"]] == [
        ("10.10.0.1/24", "10.10.0.254"), ("3ffe:ffff:0:1ff::1/64", "3ffe:ffff:0:1ff::fffe")]
    assert len(added.json["routes"]) == 3
    assert added.json["dns"]["domain"] == "example.com"
    assert run("DEL", conf(version, **BASIC)).ok


@pytest.mark.skipif(not REF.exists(), reason=f"reference plugin {REF} missing (make deps)")
def test_same_result_as_the_reference():
    ours = run("ADD", conf(**BASIC))
    theirs = run("ADD", conf(**BASIC), plugin=REF)
    assert ours.ok and theirs.ok, (ours, theirs)
    assert ours.json["ips"] == theirs.json["ips"]
    assert ours.json["routes"] == theirs.json["routes"]
    assert ours.json["dns"] == theirs.json["dns"]


def test_keeps_multiple_gateways_for_the_same_destination():
    routes = [{"dst": "0.0.0.0/0", "gw": "10.10.0.253"}, {"dst": "0.0.0.0/0", "gw": "10.10.0.254"}]
    added = run("ADD", conf(addresses=[{"address": "10.10.0.1/24"}], routes=routes))
    assert added.json["routes"] == routes


def test_del_of_an_unknown_id_does_not_fail():
    assert run("DEL", conf(**BASIC), containerid="unknown").ok


def test_addresses_from_cni_args():
    added = run("ADD", conf(addresses=[]), args="IP=10.10.0.1/24,11.11.0.1/24;GATEWAY=10.10.0.254")
    assert [(ip["address"], ip.get("gateway")) for ip in added.json["ips"]] == [
        ("10.10.0.1/24", "10.10.0.254"), ("11.11.0.1/24", None)]


def test_runtime_config_beats_args_beats_cni_args():
    config = conf(addresses=[{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}])
    config["args"] = {"cni": {"ips": ["10.10.0.2/24"]}}
    config["capabilities"] = {"ips": True}
    config["runtimeConfig"] = {"ips": ["10.10.0.3/24", "2001:db8::3/64"]}
    added = run("ADD", config, args="IP=10.10.0.4/24;GATEWAY=10.10.0.254")
    assert [ip["address"] for ip in added.json["ips"]] == ["10.10.0.3/24", "2001:db8::3/64"]
    assert all("gateway" not in ip for ip in added.json["ips"])
    del config["runtimeConfig"]
    assert [ip["address"] for ip in run("ADD", config, args="IP=10.10.0.4/24").json["ips"]] == ["10.10.0.2/24"]


@pytest.mark.parametrize("config,args,message", [
    (conf(addresses=[{"address": "10.10.0.1"}]), None,
     "the 'address' field is expected to be in CIDR notation, got: '10.10.0.1'"),
    (conf(addresses=[]), "IP=10.10.0.1", "the 'ip' field is expected to be in CIDR notation, got: '10.10.0.1'"),
    ({**conf(addresses=[]), "runtimeConfig": {"ips": ["10.10.0.1"]}}, None,
     "an entry in the 'ips' field is NOT in CIDR notation, got: '10.10.0.1'"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "x", "runtimeConfig": {"ips": ["10.0.0.1/24"]}}, None,
     "IPAM config missing 'ipam' key"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "x", "args": {"cni": {"ips": ["10.0.0.1/24"]}}}, None,
     "IPAM config missing 'ipam' key"),
])
def test_invalid_input_is_refused_with_the_reference_text(config, args, message):
    added = run("ADD", config, args=args)
    assert not added.ok and message in added.json["msg"], added


@pytest.mark.parametrize("addresses,key", [
    ([{"address": "10.10.0.1/24"}, {"address": "10.10.1.1/24", "gateway": "2001:db8::1"}], "ipam.addresses[1].gateway"),
    ([{"address": "10.10.1.1/24", "gateway": "10.10.2.1"}], "ipam.addresses[0].gateway"),
    ([{"address": "10.10.1.1/24"}, {"address": "10.10.1.1/25"}], "ipam.addresses[1]"),
])
def test_validation_the_reference_skips_names_the_entry(addresses, key):
    added = run("ADD", conf(addresses=addresses))
    assert added.error_code() == 7 and key in added.json["msg"], added


def test_check_against_prev_result():
    ipam = dict(addresses=[{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}])
    good = {**conf(**ipam), "prevResult": {"cniVersion": "1.0.0", "ips": [
        {"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]}}
    assert run("CHECK", good).ok
    bad = {**conf(**ipam), "prevResult": {"cniVersion": "1.0.0", "ips": [
        {"address": "10.10.0.1/24", "gateway": "10.10.0.1"}]}}
    assert "Failed to match addr 10.10.0.1/24" in run("CHECK", bad).json["msg"]


def test_status_and_gc_succeed():
    config = conf("1.1.0", **BASIC)
    assert run("STATUS", config).ok
    assert run("GC", {**config, "cni.dev/valid-attachments": []}).ok


def test_conf_example():
    import json
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / "conf-examples/static-addresses.conf"
    added = run("ADD", json.loads(example.read_text()))
    assert [ip["address"] for ip in added.json["ips"]] == ["10.27.0.5/24", "fd00:27::5/64"], added
