"""firewall with "backend": "nftables": table inet cni_firewall written over netlink, real traffic.

Each test has its own `host` namespace (where bridge and firewall run and the table lives) and
containers on one or two bridges of it (10.77.0.0/24 + 2001:db8:77::/64, 10.78.0.0/24). Traffic
only ever flows between these namespaces. The kernel state is read independently with
`nft -j list table inet cni_firewall`.
"""

import json
import os
import shutil

import pytest

from cnitest import REPO
from test_bridge_support import run_in
from test_firewall import (  # noqa: F401
    NETWORKS, RECORDS, Net, address, filter_rules, isolated_bridges, net, parallel_firewall_adds, reaches,
    remove_records)

TABLE = ["inet", "cni_firewall"]
JUMPS = ["jump admin", "jump isolation_stage_1", "jump containers"]


def nft_table(ns):
    """The table's JSON objects ([] when there is no table)."""
    out = ns.run("nft", "-j", "list", "table", *TABLE, check=False)
    return json.loads(out)["nftables"] if out.strip() else []


def render(expression):
    """One expression of `nft -j` as nft's rule text writes it (the kinds our rules use)."""
    if "match" in expression:
        match = expression["match"]
        left, right, op = match["left"], match["right"], match["op"]
        if "payload" in left:
            text = f'{left["payload"]["protocol"]} {left["payload"]["field"]}'
        elif "meta" in left:
            text = left["meta"]["key"]
            right = f'"{right}"'
        elif "ct" in left:
            text = f'ct {left["ct"]["key"]}'
        else:
            raise AssertionError(f"unexpected match {match}")
        if isinstance(right, list):
            right = ",".join(right)
        return f"{text} {'' if op in ('==', 'in') else op + ' '}{right}"
    if "jump" in expression:
        return f'jump {expression["jump"]["target"]}'
    (verdict,) = expression.keys()
    return verdict


def rules(ns, chain):
    """(text, comment, handle) of `chain`'s rules, in order."""
    return [(" ".join(render(e) for e in item["rule"]["expr"]), item["rule"].get("comment"), item["rule"]["handle"])
            for item in nft_table(ns) if "rule" in item and item["rule"]["chain"] == chain]


def texts(ns, chain):
    return [text for text, _, _ in rules(ns, chain)]


def per_ip(result):
    out = []
    for ip in result["ips"]:
        host = ip["address"].split("/")[0]
        family = "ip6" if ":" in host else "ip"
        out += [f"{family} daddr {host} ct state established,related accept", f"{family} saddr {host} accept"]
    return out


def comment(net, containerid, ifname="eth0"):
    return f"net: {net.network}, if: {ifname}, id: {containerid}"


def owners(ns):
    """The container ID of each rule of `containers`, from its comment."""
    return [c.rsplit("id: ", 1)[1] for _, c, _ in rules(ns, "containers")]


def nft_config(net, result=None, **keys):
    return net.firewall_config(result, backend="nftables", **keys)


def test_add_writes_the_table_check_and_del_clean(net):
    container, result = net.attach("ctr1", backend="nftables")
    objects = nft_table(net.host)
    assert [o["table"]["name"] for o in objects if "table" in o] == ["cni_firewall"]
    # nft 1.0.6's JSON leaves the table's comment out; its text has it.
    assert 'comment "CNI firewall plugin"' in net.host.run("nft", "list", "table", *TABLE)
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    assert sorted(chains) == ["admin", "containers", "forward", "isolation_stage_1", "isolation_stage_2"]
    forward = chains["forward"]
    assert (forward["type"], forward["hook"], forward["prio"], forward["policy"]) == ("filter", "forward", 0, "accept")
    assert texts(net.host, "forward") == JUMPS
    assert texts(net.host, "containers") == per_ip(result)
    assert all(c.endswith(comment(net, "ctr1")) for _, c, _ in rules(net.host, "containers"))
    assert filter_rules(net.host) == [] and filter_rules(net.host, ipv6=True) == [], "no iptables rule"

    # A second ADD (a runtime retry) replaces the attachment's rules: nothing twice.
    assert net.firewall("ADD", nft_config(net, result), container, "ctr1").ok
    assert texts(net.host, "containers") == per_ip(result) and texts(net.host, "forward") == JUMPS

    check = net.firewall("CHECK", nft_config(net, result), container, "ctr1")
    assert check.ok, str(check)
    _, _, handle = rules(net.host, "containers")[1]
    net.host.run("nft", "delete", "rule", *TABLE, "containers", "handle", str(handle))
    check = net.firewall("CHECK", nft_config(net, result), container, "ctr1")
    assert check.error_code() == 105 and f"ip saddr {address(result, 4)} accept" in check.json["msg"], str(check)

    # The admin's own rule in `admin` survives our ADDs and DELs.
    net.host.run("nft", "add", "rule", *TABLE, "admin", "ip", "saddr", "10.77.0.250", "accept")
    assert net.firewall("ADD", nft_config(net, result), container, "ctr1").ok
    assert net.firewall("DEL", nft_config(net, result), container, "ctr1").ok
    assert texts(net.host, "containers") == [], "the attachment's rules are gone"
    assert texts(net.host, "forward") == JUMPS, "the table, chains and jumps stay"
    assert texts(net.host, "admin") == ["ip saddr 10.77.0.250 accept"]
    assert not os.path.exists(f"{RECORDS}/{net.network}"), "the attachment record is gone"
    again = net.firewall("DEL", nft_config(net, result), container, "ctr1")
    assert again.ok, f"DEL is idempotent: {again}"
    net.host.run("nft", "delete", "table", *TABLE)
    assert net.firewall("DEL", nft_config(net, result), container, "ctr1").ok, "DEL without the table"


def test_del_without_prev_result_or_record_removes_only_that_attachment(net):
    c1, r1 = net.attach("ctr1", backend="nftables")
    c2, r2 = net.attach("ctr2", backend="nftables")
    assert owners(net.host) == ["ctr1"] * 4 + ["ctr2"] * 4
    shutil.rmtree(f"{RECORDS}/{net.network}")  # the comments alone find the rules
    run = net.firewall("DEL", nft_config(net), None, "ctr1")
    assert run.ok, str(run)
    assert owners(net.host) == ["ctr2"] * 4 and texts(net.host, "containers") == per_ip(r2)
    assert net.firewall("DEL", nft_config(net), None, "ctr1").ok, "DEL twice"
    assert net.firewall("DEL", nft_config(net), c2, "ctr2").ok
    assert texts(net.host, "containers") == []


def test_gc_removes_rules_of_attachments_not_listed(net):
    _, kept = net.attach("keep1", backend="nftables")
    net.attach("gone1", backend="nftables")
    net.attach("gone2", backend="nftables")
    os.unlink(f"{RECORDS}/{net.network}/gone2+eth0")  # no record: GC still finds its rules
    config = nft_config(net, cniVersion="1.1.0")
    config["cni.dev/valid-attachments"] = [{"containerID": "keep1", "ifname": "eth0"}]
    run = run_in(net.host, "firewall", "GC", config, raw_env={"CNI_COMMAND": "GC", "CNI_PATH": "/nonexistent"})
    assert run.ok, str(run)
    assert owners(net.host) == ["keep1"] * 4 and texts(net.host, "containers") == per_ip(kept)
    assert sorted(os.listdir(f"{RECORDS}/{net.network}")) == ["keep1+eth0"]
    assert net.firewall("DEL", nft_config(net), None, "keep1").ok


@pytest.mark.parametrize("policy", ["same-bridge", "isolated"])
def test_ingress_policy_isolates_bridges(netns_factory, tmp_path, policy):
    a, b, attached = isolated_bridges(netns_factory, tmp_path, policy, nft_config)
    (_, a1, ra1, _), _, (_, b1, rb1, _) = attached

    stage1 = []
    for bridge in (a.bridge, b.bridge):
        stage1.append(f'iifname "{bridge}" oifname != "{bridge}" jump isolation_stage_2')
        if policy == "isolated":
            stage1.append(f'iifname "{bridge}" oifname "{bridge}" drop')
    assert texts(a.host, "isolation_stage_1") == stage1, "once per bridge, though two containers share a"
    assert texts(a.host, "isolation_stage_2") == [f'oifname "{bridge}" drop' for bridge in (a.bridge, b.bridge)]
    assert texts(a.host, "forward") == JUMPS

    # The admin's accept comes first: it overrides the isolation.
    for field in ("saddr", "daddr"):
        a.host.run("nft", "add", "rule", *TABLE, "admin", "ip", field, address(ra1, 4), "accept")
    assert reaches(a1, address(rb1, 4)), "a1 out and the reply back through admin's accepts"
    a.host.run("nft", "flush", "chain", *TABLE, "admin")

    for net, container, result, cid in attached:
        assert net.firewall("DEL", nft_config(net, result, ingressPolicy=policy), container, cid).ok
    assert texts(a.host, "containers") == []
    assert len(texts(a.host, "isolation_stage_1")) == len(stage1), "DEL leaves the isolation (as the reference)"
    assert not os.path.exists(f"{RECORDS}/{a.network}") and not os.path.exists(f"{RECORDS}/{b.network}")


def test_conf_example_works_as_given(net):
    """The example's chain, bridge name and dataDir made private, ADD in order and DEL in reverse."""
    example = json.loads((REPO / "conf-examples" / "firewall-nftables.conflist").read_text())
    container = net.container()
    result = None
    for plugin in example["plugins"]:
        if plugin["type"] == "bridge":
            plugin["bridge"] = net.bridge
            plugin["ipam"]["dataDir"] = net.data_dir
    configs = [dict(plugin, cniVersion=example["cniVersion"], name=net.network) for plugin in example["plugins"]]
    for config in configs:
        if result is not None:
            config["prevResult"] = result
        run = run_in(net.host, config["type"], "ADD", config, netns=container.path, containerid="ex1")
        assert run.ok, f"{config['type']}: {run}"
        result = run.json
    assert texts(net.host, "containers") == per_ip(result)
    assert any(f'iifname "{net.bridge}"' in text for text in texts(net.host, "isolation_stage_1"))
    for config in reversed(configs):
        config["prevResult"] = result
        run = run_in(net.host, config["type"], "DEL", config, netns=container.path, containerid="ex1")
        assert run.ok, f"{config['type']}: {run}"
    assert texts(net.host, "containers") == []


def test_parallel_first_adds_on_a_fresh_host_write_the_shared_rules_once(net):
    """Six containers' ADDs at once on a host without the table: one batch makes the table and
    the bridge's isolation, the others find them; nothing is doubled."""
    attached = parallel_firewall_adds(net, 6, lambda result: nft_config(net, result, ingressPolicy="same-bridge"))
    assert texts(net.host, "forward") == JUMPS
    assert texts(net.host, "isolation_stage_1") == [f'iifname "{net.bridge}" oifname != "{net.bridge}" '
                                                    "jump isolation_stage_2"]
    assert texts(net.host, "isolation_stage_2") == [f'oifname "{net.bridge}" drop']
    assert sorted(texts(net.host, "containers")) == sorted(rule for _, result, _ in attached for rule in per_ip(result))
    assert sorted(set(owners(net.host))) == [cid for _, _, cid in attached]


def test_an_iptables_forward_drop_policy_still_drops_what_we_accept(netns_factory, tmp_path):
    """The README's caveat: an accept in our table ends only our chain; iptables' FORWARD (another
    base chain on the hook) still applies its DROP policy, unlike with the iptables backend."""
    a = Net(netns_factory, tmp_path, subnet6=None)
    b = Net(netns_factory, tmp_path, host=a.host, subnet4="10.78.0.0/24", subnet6=None)
    container_a, container_b = a.container(), b.container()
    result_a = a.add(a.bridge_config(), container_a, containerid="a1")
    result_b = b.add(b.bridge_config(), container_b, containerid="b1")
    assert a.firewall("ADD", nft_config(a, result_a), container_a, "a1").ok
    assert reaches(container_a, address(result_b, 4)), "a1 out, the reply in"
    a.host.run("iptables", "-P", "FORWARD", "DROP")
    assert not reaches(container_a, address(result_b, 4)), "iptables' DROP policy still applies"
    assert a.firewall("DEL", nft_config(a), container_a, "a1").ok
