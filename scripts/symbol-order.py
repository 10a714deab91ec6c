#!/usr/bin/env python3
"""Writes the link order of cni-plugins' code: Sources/cni-plugins/symbol-order.txt.

Every plugin maps the whole multi-call binary, and the kernel pages its code in around each
page fault (64 KiB fault-around, readahead on a cold start): what a plugin's RSS and cold start
cost follows how many distinct 64 KiB windows of the text its run touches, not how much code it
runs. Linked in the default order, the few thousand functions a start-up and an ADD run are
spread over all of the 7 MB text. The release link (Package.swift) hands lld this file as
--symbol-ordering-file, which puts those functions first, together, in the order of the file.

The file comes from real runs of the release binary under valgrind's callgrind (exact: every
function that ran, including the static glibc's and the Swift runtime's start-up before main),
in a private network namespace, and lists them by layer, each function once, at its first:

  1. start-up: what a VERSION of every plugin runs (the part all of them share first),
  2. bridge + host-local ADD (the bench's peak-RSS row; host-local runs in-process),
  3. host-local ADD on its own,
  4. the bridge's CHECK and DEL, host-local's DEL,
  5. the other scenarios: static, dual-stack, ipMasq (iptables, nftables), ptp, loopback,
     portmap (iptables, nftables), firewall, tuning, bandwidth.

Inside a layer the names are sorted, so that a rerun on the same code writes the same file.
glibc picks its string functions at start-up by CPU (IRELATIVE relocations); valgrind's
emulated CPU gets other variants than this machine, so the variants this machine picks (read
from a native run under gdb) are added for each function family the runs used.

Run by hand after changes that move much code or add functions to a measured path (the build
works whatever the file holds: lld ignores names that no longer exist, but a new function left
out of the file lands among the unordered code, and its first call faults in a 64 KiB window no
run touched before: three such windows were 0.19 MiB of peak RSS), then `make build`, and commit
the file:

    scripts/symbol-order.py                 # builds the unstripped release binary first
    scripts/symbol-order.py --binary PATH   # an unstripped build of cni-plugins
    scripts/symbol-order.py --keep          # leaves the callgrind files in the work directory

Needs root (network namespaces), valgrind, gdb, iproute2, iptables and nftables
(apt-get install valgrind gdb). stdlib only.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "Sources" / "cni-plugins" / "symbol-order.txt"
PLUGINS = ("bridge", "host-local", "static", "loopback", "portmap", "ptp", "firewall", "tuning", "bandwidth",
           "cluster-ipam")
CNI_VERSION = "1.0.0"
# Private ranges, inside this script's own namespaces only.
V4, V6, PTP_V4 = "10.235", "fd00:5e0:1:", "10.236"
MAPPINGS = [{"hostPort": 18090, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 18091, "containerPort": 81, "protocol": "udp"}]
LAYERS = ("start-up (VERSION of every plugin)", "bridge + host-local ADD", "host-local ADD",
          "bridge CHECK and DEL, host-local DEL", "other scenarios")


def sh(*argv, check=True, **kwargs):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        sys.exit(f"symbol-order: {' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def build():
    """The release build of the Makefile, unstripped (no -Xlinker -s): same objects, with names."""
    flags = ["-c", "release", "--static-swift-stdlib"]
    print("symbol-order: swift build " + " ".join(flags), file=sys.stderr)
    subprocess.run(["swift", "build", *flags, "--product", "cni-plugins"], cwd=REPO, check=True,
                   stdout=sys.stderr)
    return Path(sh("swift", "build", *flags, "--show-bin-path", cwd=REPO).strip()) / "cni-plugins"


class Runner:
    """Runs the plugins under callgrind in a private host namespace, one output file per run."""

    def __init__(self, work, binary):
        self.work, self.binary = work, binary
        self.bin = work / "bin"
        self.bin.mkdir()
        for plugin in PLUGINS:  # the multi-call binary runs as the name it is started under
            (self.bin / plugin).symlink_to(binary)
        self.data = work / "data"
        self.tag = f"symorder-{os.getpid()}"
        self.host, self.container = f"{self.tag}-h", f"{self.tag}-c"
        self.runs = []  # (layer, label, callgrind file)
        sh("ip", "netns", "add", self.host)
        sh("ip", "-n", self.host, "link", "set", "lo", "up")
        sh("ip", "netns", "add", self.container)

    def close(self):
        for name in (self.container, self.host):
            sh("ip", "netns", "del", name, check=False)

    def run(self, layer, plugin, command, config=None, ifname="eth0", container="c1"):
        label = f"{plugin} {command}"
        out = self.work / f"callgrind.{len(self.runs):02d}"
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=f"{self.tag}-{container}",
                   CNI_NETNS=f"/run/netns/{self.container}", CNI_IFNAME=ifname, CNI_PATH=str(self.bin))
        proc = subprocess.run(
            ["ip", "netns", "exec", self.host, "valgrind", "--tool=callgrind", "--demangle=no",
             "--compress-strings=no", "--compress-pos=no", f"--callgrind-out-file={out}",
             str(self.bin / plugin)],
            env=env, input=json.dumps(config or {}), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            errors = " ".join(line for line in proc.stderr.splitlines() if not line.startswith("=="))
            message = f"symbol-order: {label} failed ({proc.returncode}): {proc.stdout.strip()} {errors}"
            if layer < len(LAYERS) - 1:  # the measured paths must all run
                sys.exit(message)
            print(message + " (left out)", file=sys.stderr)  # its error path is not what to order
            return None
        print(f"symbol-order: {label}", file=sys.stderr)
        self.runs.append((layer, label, out))
        return json.loads(proc.stdout) if proc.stdout.strip() else None


def bridge_config(name, ipam=None, **keys):
    return dict({"cniVersion": CNI_VERSION, "name": name, "type": "bridge", "bridge": f"so{os.getpid() % 100000}",
                 "isGateway": True, "ipam": ipam}, **keys)


def scenarios(r):
    data = str(r.data)
    host_local = {"type": "host-local", "ranges": [[{"subnet": f"{V4}.0.0/16"}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data}
    dual = dict(host_local, ranges=host_local["ranges"] + [[{"subnet": f"{V6}:/64"}]],
                routes=host_local["routes"] + [{"dst": "::/0"}])
    static = {"type": "static", "routes": [{"dst": "0.0.0.0/0"}],
              "addresses": [{"address": f"{V4}.200.10/16", "gateway": f"{V4}.0.1"}]}

    def with_prev(config, result):
        return dict(config, prevResult=result)

    def cycle(layer_add, layer_rest, config, check=True, plugin="bridge", ifname="eth0"):
        result = r.run(layer_add, plugin, "ADD", config, ifname)
        if check:
            r.run(layer_rest, plugin, "CHECK", with_prev(config, result), ifname)
        r.run(layer_rest, plugin, "DEL", with_prev(config, result), ifname)

    for plugin in PLUGINS:
        r.run(0, plugin, "VERSION")
    base = bridge_config("symorder", host_local)
    cycle(1, 3, base)
    host_local_alone = {"cniVersion": CNI_VERSION, "name": "symorder-hl", "type": "bridge",
                        "ipam": dict(host_local, ranges=[[{"subnet": f"{V4}.128.0/17"}]])}
    result = r.run(2, "host-local", "ADD", host_local_alone)
    r.run(3, "host-local", "DEL", with_prev(host_local_alone, result))
    cycle(4, 4, bridge_config("symorder", static), check=False)
    cycle(4, 4, bridge_config("symorder", dual))
    for backend in ("nftables", "iptables"):
        cycle(4, 4, bridge_config("symorder", host_local, ipMasq=True, ipMasqBackend=backend))
    ptp = {"cniVersion": CNI_VERSION, "name": "symorder-ptp", "type": "ptp",
           "ipam": dict(host_local, ranges=[[{"subnet": f"{PTP_V4}.0.0/16"}]])}
    cycle(4, 4, ptp, plugin="ptp")
    cycle(4, 4, {"cniVersion": CNI_VERSION, "name": "cni-loopback", "type": "loopback"}, check=False,
          plugin="loopback", ifname="lo")
    # The chains: bridge's result through portmap (both backends), firewall, tuning, bandwidth.
    result = r.run(4, "bridge", "ADD", base)
    chained = [{"type": "portmap", "backend": "iptables", "runtimeConfig": {"portMappings": MAPPINGS}},
               {"type": "portmap", "backend": "nftables", "runtimeConfig": {"portMappings": MAPPINGS}},
               {"type": "firewall", "backend": "iptables"},
               {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
               {"type": "bandwidth", "runtimeConfig": {"bandwidth": {"ingressRate": 8000000, "ingressBurst": 80000,
                                                                     "egressRate": 8000000, "egressBurst": 80000}}}]
    for keys in chained:
        config = dict({"cniVersion": CNI_VERSION, "name": "symorder"}, **keys)
        out = r.run(4, keys["type"], "ADD", with_prev(config, result))
        r.run(4, keys["type"], "CHECK", with_prev(config, out))
        r.run(4, keys["type"], "DEL", with_prev(config, out))
    r.run(4, "bridge", "DEL", with_prev(base, result))


def functions(path, names):
    """The functions a callgrind file says ran (the fn= and cfn= lines), that the binary defines."""
    ran = set()
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                name = line.split("=", 1)[1].strip()
                if name in names:
                    ran.add(name)
    return ran


def native_ifunc_targets(binary, work):
    """The functions this machine's glibc resolved its IRELATIVE relocations to: read from a
    native VERSION run, stopped at exit_group under gdb."""
    slots = [line.split()[0] for line in sh("readelf", "-rW", binary).splitlines() if "IRELATIV" in line]
    if not slots:
        return []
    script = work / "irelative.py"
    out = work / "irelative.txt"
    script.write_text(
        "import gdb\n"
        "inferior = gdb.selected_inferior()\n"
        f"with open({str(out)!r}, 'w') as out:\n"
        f"    for slot in {slots!r}:\n"
        "        value = bytes(inferior.read_memory(int(slot, 16), 8))\n"
        "        out.write(hex(int.from_bytes(value, 'little')) + '\\n')\n")
    env = dict(os.environ, CNI_COMMAND="VERSION")
    sh("gdb", "-nx", "-batch", "-ex", "set startup-with-shell off", "-ex", "catch syscall exit_group",
       "-ex", "run > /dev/null", "-ex", f"source {script}", "-ex", "kill", "--args", str(work / "bin" / "bridge"),
       env=env, stdin=subprocess.DEVNULL)
    return [int(line, 16) for line in out.read_text().split()]


def family(name):
    """glibc's name for a variant's function: __memcpy_avx_unaligned_erms -> memcpy."""
    return name.lstrip("_").split("_")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, help="an unstripped release build of cni-plugins "
                        "(default: build one with swift build)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.relative_to(REPO)}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (callgrind files)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("symbol-order: needs root (it creates network namespaces)")
    for tool in ("valgrind", "gdb", "ip", "readelf", "nm"):
        if not shutil.which(tool):
            sys.exit(f"symbol-order: '{tool}' is missing (apt-get install valgrind gdb iproute2 binutils)")
    binary = (args.binary or build()).resolve()
    addresses = {}  # name -> address, for every function the binary defines
    by_address = {}
    for line in sh("nm", "--defined-only", binary).splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) == 3 and fields[1] in "tTwWi":
            address = int(fields[0], 16)
            addresses[fields[2]] = address
            by_address.setdefault(address, []).append(fields[2])
    if not addresses:
        sys.exit(f"symbol-order: {binary} has no symbol table (a stripped build?); pass an unstripped one")
    work = Path(tempfile.mkdtemp(prefix="symbol-order."))
    runner = Runner(work, binary)
    try:
        scenarios(runner)
        ifunc_targets = native_ifunc_targets(binary, work)
    finally:
        runner.close()
    layers = [set() for _ in LAYERS]
    start_up = None
    for layer, _, path in runner.runs:
        ran = functions(path, addresses)
        # Every name at an address that ran (aliases: lld orders the section of any of them).
        ran = {alias for name in ran for alias in by_address[addresses[name]]}
        layers[layer] |= ran
        if layer == 0:
            start_up = ran if start_up is None else start_up & ran
    families = {family(name) for layer in layers for name in layer}
    native = {name for address in ifunc_targets for name in by_address.get(address, [])
              if family(name) in families}
    ordered, seen = [], set()
    groups = [("start-up, common to every plugin", start_up | native)] + list(zip(LAYERS, layers))
    lines = ["# The release link order of cni-plugins' code (lld --symbol-ordering-file, see Package.swift):",
             "# written by scripts/symbol-order.py from callgrind runs of the plugins; regenerate, do not edit.",
             "# Names that no longer exist are ignored by the link."]
    for title, names in groups:
        names = sorted(names - seen)
        seen |= set(names)
        lines.append(f"# {title}: {len(names)} functions")
        lines.extend(names)
        ordered.extend(names)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"symbol-order: {len(ordered)} functions from {len(runner.runs)} runs -> {args.output}", file=sys.stderr)
    if args.keep:
        print(f"symbol-order: callgrind files kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
