#!/usr/bin/env python3
"""host-local ADD/DEL latency against the number of existing leases, ours next to the reference.

Prefills a /16 with 0 / 1,000 / 10,000 / 60,000 leases in the reference's on-disk format (one
file per address holding `<containerID>\\r\\n<ifname>`, plus last_reserved_ip.0), then times ADD
and DEL (median of --runs, runs alternating between the sizes) for each plugin on its own stores.
Our first operation on a store the reference wrote rebuilds our index once (one scan); it is
reported separately as "first ADD".

Usage: bench/hostlocal_scale.py [--ours bin/host-local] [--reference /usr/lib/cni/host-local]
Not part of `make test`: timings depend on the machine.
"""

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBNET = ipaddress.ip_network("10.20.0.0/16")


def prefill(directory: Path, count: int):
    leases = directory / "benchnet"
    leases.mkdir(parents=True)
    hosts = SUBNET.hosts()
    next(hosts)  # the gateway
    last = None
    for i in range(count):
        last = next(hosts)
        (leases / str(last)).write_bytes(f"prefill{i}\r\neth0".encode())
    if last is not None:
        (leases / "last_reserved_ip.0").write_text(str(last))


def config(directory: Path) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "benchnet", "type": "host-local",
                       "ipam": {"type": "host-local", "dataDir": str(directory),
                                "ranges": [[{"subnet": str(SUBNET)}]]}}).encode()


def timed(plugin: str, command: str, stdin: bytes, container: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": "/var/run/netns/bench", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    start = time.perf_counter()
    proc = subprocess.run([plugin], input=stdin, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{plugin} {command} failed: {proc.stdout!r} {proc.stderr!r}")
    return elapsed * 1000


def measure(plugin: str, sizes, runs: int):
    """Per size: (first ADD, median ADD, median DEL) in ms. Runs alternate between the sizes so
    that the load of a shared machine weighs on all of them alike."""
    directories = {size: Path(tempfile.mkdtemp(prefix=f"hostlocal-bench-{size}-")) for size in sizes}
    try:
        for size, directory in directories.items():
            prefill(directory, size)
        # Write the prefill back first: otherwise its writeback lands in the measured runs.
        os.sync()
        first = {}
        for size, directory in directories.items():
            first[size] = timed(plugin, "ADD", config(directory), "warmup")
            timed(plugin, "DEL", config(directory), "warmup")
        adds = {size: [] for size in sizes}
        dels = {size: [] for size in sizes}
        for i in range(runs):
            for size, directory in directories.items():
                adds[size].append(timed(plugin, "ADD", config(directory), f"bench{i}"))
                dels[size].append(timed(plugin, "DEL", config(directory), f"bench{i}"))
        return {size: (first[size], statistics.median(adds[size]), statistics.median(dels[size])) for size in sizes}
    finally:
        for directory in directories.values():
            shutil.rmtree(directory, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", default=str(Path(os.environ.get("SWIFT_CNI_BIN", REPO / "bin")) / "host-local"))
    parser.add_argument("--reference", default="/usr/lib/cni/host-local")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="0,1000,10000,60000")
    args = parser.parse_args()
    plugins = [("ours", args.ours)] + ([("reference", args.reference)] if Path(args.reference).exists() else [])
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {name: measure(plugin, sizes, args.runs) for name, plugin in plugins}
    print(f"{'leases':>7} {'plugin':>9} {'first ADD ms':>13} {'ADD ms':>8} {'DEL ms':>8}")
    for size in sizes:
        for name, _ in plugins:
            first, add, delete = results[name][size]
            print(f"{size:>7} {name:>9} {first:>13.1f} {add:>8.1f} {delete:>8.1f}")


if __name__ == "__main__":
    main()
