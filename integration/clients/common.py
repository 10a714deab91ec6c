"""What every client test needs: the plugin directory a client runs, versions, and leak checks.

The plugins under test come from `cnitest.BIN_DIR` (env SWIFT_CNI_BIN, default the repo's bin/).
Point SWIFT_CNI_BIN at /usr/lib/cni to run the same client tests against the reference plugins.
A chain may also need the reference's other plugins (firewall, tuning): the assembled directory
holds copies of ours plus those (unless a test asks for ours only), so a client sees one plugin
directory as in production.
"""

import ipaddress
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from cnitest import BIN_DIR, REF_DIR, sh

OUR_PLUGINS = ("bridge", "ptp", "host-local", "static", "loopback", "portmap", "firewall", "tuning", "bandwidth")
# Every plugin of a runtime's default chain is ours now; kept for a chain that needs one of the reference's.
CHAINED_REFERENCE_PLUGINS = ()
LEASE_ROOT = Path("/var/lib/cni/networks")


def testing_reference() -> bool:
    """True when SWIFT_CNI_BIN points at the reference plugins (the harness's own self-test)."""
    try:
        return BIN_DIR.resolve() == REF_DIR.resolve()
    except OSError:
        return False


def reference_gap(reason: str):
    """Mark a check the reference plugins are known to fail; ours must pass it."""
    if testing_reference():
        pytest.xfail(f"known reference-plugin gap: {reason}")


def assemble_plugin_dir(target: Path, with_reference: bool = True) -> Path:
    """Copy our plugins and (unless `with_reference` is false) the reference's chained plugins
    into `target` (one directory)."""
    target.mkdir(parents=True, exist_ok=True)
    sources = [(BIN_DIR / name, name) for name in OUR_PLUGINS]
    if with_reference:
        sources += [(REF_DIR / name, name) for name in CHAINED_REFERENCE_PLUGINS]
    missing = [str(path) for path, _ in sources if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"plugins missing for the client tests: {missing} (run `make build`; "
                    f"the chained ones come from Debian's containernetworking-plugins)")
    for path, name in sources:
        shutil.copy2(path, target / name)
    return target


def require_tool(name: str, package: str) -> str:
    """The tool's path, or FAIL (never skip) naming the Debian package `make deps` installs."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: install Debian package {package} (make deps)")
    return path


def debian_version(package: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "not installed"


def leases(network: str):
    """Address lease files host-local holds for `network` (lock and last_reserved_ip excluded)."""
    directory = LEASE_ROOT / network
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.name != "lock" and not p.name.startswith("last_reserved_ip"))


def remove_lease_dir(network: str):
    shutil.rmtree(LEASE_ROOT / network, ignore_errors=True)


def firewall_state() -> str:
    """Everything the firewall holds, iptables (legacy view of nft) and nftables together."""
    parts = []
    for argv in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        proc = subprocess.run(argv, capture_output=True, text=True)
        parts.append(proc.stdout)
    return "\n".join(parts)


def firewall_mentions(*needles: str):
    """Lines of the firewall state that mention any of `needles` (a container id, an address)."""
    state = firewall_state()
    return [line for line in state.splitlines() if any(n and n in line for n in needles)]


def veths_on_bridge(bridge: str):
    links = json.loads(sh("ip", "-j", "link", "show", "master", bridge, check=False) or "[]")
    return [link["ifname"] for link in links]


def delete_link(name: str):
    subprocess.run(["ip", "link", "del", name], capture_output=True)


def announce(request, text: str):
    """One line on the terminal (not captured): which client and version a module drives."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[clients] {text}")


def plugins_under_test() -> str:
    return f"reference plugins ({REF_DIR})" if testing_reference() else f"swift-cni plugins ({BIN_DIR})"


def purge_firewall(needle: str):
    """Remove every iptables rule and nftables rule mentioning `needle` (and the per-container
    CNI-… chains they jump to): a leak found by a test is reported, but never left on the host."""
    import re
    import shlex
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter", "mangle"):
            proc = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True)
            chains = set()
            for line in proc.stdout.splitlines():
                if line.startswith("-A ") and needle in line:
                    argv = shlex.split(line)
                    subprocess.run([tool, "-w", "-t", table, "-D", *argv[1:]], capture_output=True)
                    if "-j" in argv and re.fullmatch(r"CNI-[0-9a-f]{24}", argv[argv.index("-j") + 1]):
                        chains.add(argv[argv.index("-j") + 1])
            for chain in chains:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True)
                subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True)
    listing = subprocess.run(["nft", "-a", "list", "ruleset"], capture_output=True, text=True).stdout
    table = chain = None
    for line in listing.splitlines():
        words = line.split()
        if words[:1] == ["table"]:
            table, chain = words[1:3], None
        elif words[:1] == ["chain"]:
            chain = words[1]
        elif needle in line and table and chain and "# handle" in line:
            handle = line.rsplit("# handle", 1)[1].split()[0]
            subprocess.run(["nft", "delete", "rule", *table, chain, "handle", handle], capture_output=True)


def free_subnet() -> str:
    """A random /24 in 10.200.0.0/13 that no host route overlaps (other tests may hold some)."""
    taken = []
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                taken.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
            except ValueError:
                pass
    for _ in range(100):
        candidate = ipaddress.ip_network(f"10.{random.randint(200, 207)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    pytest.fail("no free 10.200.0.0/13 test subnet on this host")
