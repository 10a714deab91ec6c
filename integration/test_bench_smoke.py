"""`make bench`'s code paths, once, with tiny counts: for correctness only, never for timing.

Every measurement of bench/run.py runs (both columns, the floor, the peak-RSS launcher, the
parallel runner, prefilled leases) and the table and JSON must list every row with a value on
both sides and no failed plugin run. No assertion here looks at a duration.
"""

import json
import os
import subprocess
import sys

import pytest

from cnitest import BIN_DIR, REF_DIR, REPO
from etcd import ETCD


def test_bench_runs_every_row_once(tmp_path):
    output = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--ours", str(BIN_DIR), "--reference", str(REF_DIR),
         "--rounds", "2", "--iterations", "1", "--containers", "16", "--parallel", "1,8,16",
         "--leases", "0,10,100", "--json", str(output)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"

    report = json.loads(output.read_text())
    rows = {row["id"]: row for row in report["rows"]}
    expected = (
        [f"startup-{p}" for p in ("bridge", "host-local", "static", "loopback", "portmap")]
        + [f"startup-cold-{p}" for p in ("bridge", "host-local", "static", "loopback", "portmap")]
        + ["cold-podman-ADD"]
        + [f"{s}-{c}" for s in ("base", "masq-iptables", "masq-nftables", "dual", "static", "ptp", "ptp-dual")
           for c in ("ADD", "CHECK", "DEL")]
        + [f"{s}-{c}" for s in ("portmap-iptables", "portmap-nftables") for c in ("ADD", "DEL")]
        + [f"{s}-{c}" for s in ("podman-default", "containerd-default") for c in ("ADD", "DEL")]
        + ["burst-ADD", "burst-DEL"]
        + ["create-bridge-ADD", "rss-bridge-ADD", "rss-host-local-ADD"]
        + ["faults-bridge-VERSION", "faults-bridge-ADD", "size-bridge", "size-plugins"]
        + [f"throughput-{n}{phase}" for n in (1, 8, 16) for phase in ("", "-ADD", "-DEL")]
        + [f"leases-{n}-{c}" for n in (0, 10, 100) for c in ("ADD", "DEL")]
    )
    assert sorted(rows) == sorted(expected)
    for key in expected:
        row = rows[key]
        for column in ("ours", "reference"):
            summary = row[column]
            assert summary["failures"] == 0, f"{key} {column}: {summary['first_error']}"
            assert summary["median"] is not None and summary["median"] > 0, f"{key} {column}: no sample"
        assert row["ratio"] is not None
        assert row["label"] in proc.stdout, f"table lacks {row['label']!r}"
    for key in ("floor-ADD", "floor-DEL", "spawn-overhead"):
        assert report["floor"][key]["failures"] == 0, report["floor"][key]["first_error"]
        assert report["floor"][key]["median"] is not None
    # The targets are judged (met or not) on every targeted row: the verdict exists, whatever it is.
    targeted = [row for row in report["rows"] if row["target"]]
    assert targeted and all(row["met"] in (True, False) for row in targeted)
    assert "targets met:" in proc.stdout
    # The size budget: cnictl's size, and our plugins counted as one file (hard links).
    assert report["meta"]["cnictl_mib"] > 0 and "cnictl (ours only)" in proc.stdout
    names, files = report["meta"]["plugin_files"]["ours"]
    assert names >= 5 and files == 1, report["meta"]["plugin_files"]
    # The firewall detection saw rules for every ipMasq and portmap ADD in both columns, and our
    # portmap used the backend each row names (the reference 1.1.1 always writes iptables).
    seen = report["meta"]["masquerade_seen"]
    scenarios = ("masq-iptables", "masq-nftables", "portmap-iptables", "portmap-nftables")
    assert set(seen) == {f"{c} {s}" for c in ("ours", "reference") for s in scenarios}
    assert all(value != "none" for value in seen.values()), seen
    assert seen["ours portmap-iptables"] == "iptables" and seen["ours portmap-nftables"] == "nftables", seen
    # It cleaned up: no namespace of this run is left.
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"cnibench-{report['meta']['pid']}-" not in leftover


def test_cluster_bench_runs_every_row_once(tmp_path):
    """bench/cluster.py (cluster-ipam against host-local, and claiming ADDs on a 3-member etcd),
    once with tiny counts: every row has a value; the script itself checks that each claiming ADD
    took exactly one block. No duration is asserted."""
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed (make deps installs it)")
    output = tmp_path / "cluster.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cluster.py"), "--ours", str(BIN_DIR), "--quick",
                           "--json", str(output)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"bench/cluster.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(output.read_text())
    ids = [row["id"] for row in report["rows"]]
    assert ids == ["cluster-steady-ADD", "cluster-steady-DEL", "cluster-claim-ADD-p50", "cluster-claim-ADD-p99"]
    for row in report["rows"]:
        assert row["ours"] > 0 and row["label"] in proc.stdout and row["met"] in (True, False)
    assert len(report["samples"]["claim-ADD"]) == 10
