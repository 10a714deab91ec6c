"""Host snapshots: everything a plugin could change, captured before and after, compared exactly.

A snapshot covers, for each network namespace given: links (with their details: master, MTU,
flags, bridge and port options), addresses, routes of every table (IPv4 and IPv6; not those the
kernel derives from addresses and links, which follow carrier and DAD), policy rules,
the nftables ruleset, `iptables-save` / `ip6tables-save` and the forwarding sysctls; and for each
directory given, every file and directory under it (type, mode, size, content hash).

Counters, timers, address lifetimes, carrier (operstate, NO-CARRIER, LOWER_UP, linkdown) and DAD
progress (tentative) change on their own and are left out; nothing else is.
Tests run plugins inside namespaces they created (a dedicated "host" namespace and a container
one), so a snapshot is exact and the real host is never touched.

    before = snapshot(namespaces=[host.name, container.name], directories=[data_dir])
    ... run the plugin ...
    assert_unchanged(before, snapshot(...), context="bridge ADD with mtu -1")
"""

import hashlib
import ipaddress
import json
import os
import re
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# One shell per namespace prints every section, so a snapshot costs one exec per namespace.
_SECTIONS = {
    "links": "ip -d -j link show",
    "addresses": "ip -j addr show",
    "routes4": "ip -4 -j route show table all",
    "routes6": "ip -6 -j route show table all",
    "rules4": "ip -4 -j rule show",
    "rules6": "ip -6 -j rule show",
    "nftables": "nft list ruleset",
    "iptables": "iptables-save",
    "ip6tables": "ip6tables-save",
    "sysctls": "for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding; do "
               "echo $f=$(cat $f); done",
}
_MARK = "@@swcni-section@@"

# Fields that change without anyone touching the object.
_VOLATILE_KEY = re.compile(r"timer|life_time|^expires$|^used$|^stats|^age$|^operstate$|^tentative$")


# Carrier and DAD progress follow the ports and the clock, not the configuration.
_VOLATILE_FLAGS = {"NO-CARRIER", "LOWER_UP", "linkdown"}


def _strip(value):
    if isinstance(value, dict):
        return {k: (_strip(v) if k != "flags" else [f for f in v if f not in _VOLATILE_FLAGS])
                for k, v in value.items() if not _VOLATILE_KEY.search(k)}
    if isinstance(value, list):
        # Routes the kernel derives from addresses and links (subnet, local, multicast) come and
        # go with carrier and DAD; the addresses and links themselves are compared.
        return [_strip(v) for v in value if not (isinstance(v, dict) and v.get("protocol") == "kernel")]
    return value


def _parse_json_lines(text):
    text = text.strip()
    if not text:
        return []
    try:
        return _strip(json.loads(text))
    except ValueError:
        return text


def _iptables_lines(text):
    # Comments carry timestamps; counters move with traffic. Rules and chains are what matter.
    lines = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        lines.append(re.sub(r"\[\d+:\d+\]", "[0:0]", line))
    return lines


def namespace_state(namespace):
    """The network state of one namespace (a name under /run/netns), as a comparable dict."""
    script = "; ".join(f"echo '{_MARK} {name}'; {command} 2>&1" for name, command in _SECTIONS.items())
    proc = subprocess.run(["ip", "netns", "exec", namespace, "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and _MARK not in proc.stdout:
        raise RuntimeError(f"cannot snapshot netns {namespace}: {proc.stderr}")
    state = {}
    for chunk in proc.stdout.split(_MARK + " ")[1:]:
        name, _, body = chunk.partition("\n")
        if name in ("iptables", "ip6tables"):
            state[name] = _iptables_lines(body)
        elif name in ("nftables", "sysctls"):
            state[name] = [line for line in body.splitlines() if line.strip()]
        else:
            state[name] = _parse_json_lines(body)
    return state


def directory_state(root):
    """Every entry under `root`: relative path -> (kind, mode, size, sha256 of content)."""
    root = Path(root)
    entries = {}
    if not root.exists():
        return {".": "absent"}
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in sorted(subdirs) + sorted(files):
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            mode = oct(info.st_mode & 0o7777)
            if path.is_symlink():
                entries[rel] = ("symlink", mode, os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir", mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                entries[rel] = ("file", mode, info.st_size, digest)
    return entries


def snapshot(namespaces=(), directories=()):
    """A snapshot of the given namespaces (names) and directories (paths)."""
    namespaces = list(namespaces)
    with ThreadPoolExecutor(max(1, len(namespaces))) as pool:
        states = list(pool.map(namespace_state, namespaces))
    return {
        "netns": dict(zip(namespaces, states)),
        "dirs": {str(d): directory_state(d) for d in directories},
    }


def _describe_list_change(before, after):
    if isinstance(before, list) and isinstance(after, list):
        key = lambda item: json.dumps(item, sort_keys=True)
        removed = [item for item in before if key(item) not in {key(a) for a in after}]
        added = [item for item in after if key(item) not in {key(b) for b in before}]
        parts = []
        if removed:
            parts.append("removed " + json.dumps(removed)[:1500])
        if added:
            parts.append("added " + json.dumps(added)[:1500])
        return "; ".join(parts) or "reordered"
    return f"{json.dumps(before)[:1500]} -> {json.dumps(after)[:1500]}"


def differences(before, after):
    """Human-readable differences between two snapshots (empty when identical)."""
    found = []
    for ns in sorted(set(before["netns"]) | set(after["netns"])):
        old, new = before["netns"].get(ns, {}), after["netns"].get(ns, {})
        for section in sorted(set(old) | set(new)):
            if old.get(section) != new.get(section):
                found.append(f"netns {ns} {section}: "
                             + _describe_list_change(old.get(section), new.get(section)))
    for directory in sorted(set(before["dirs"]) | set(after["dirs"])):
        old, new = before["dirs"].get(directory, {}), after["dirs"].get(directory, {})
        for path in sorted(set(old) | set(new)):
            if old.get(path) != new.get(path):
                found.append(f"{directory}/{path}: {old.get(path, 'absent')} -> {new.get(path, 'absent')}")
    return found


def assert_unchanged(before, after, context=""):
    changes = differences(before, after)
    if changes:
        raise AssertionError(f"host changed{' by ' + context if context else ''}:\n  " + "\n  ".join(changes))


def leftovers(host_ns, container_ns=None, *, ifname="eth0", container_id=None, data_dir=None, network=None,
              keep_links=()):
    """What an attachment left behind after it should be gone (empty list when nothing).

    Looks for: veths in the host namespace (other than `keep_links`), `ifname` in the container
    namespace, lease files in `<data_dir>/<network>` (all of them, or those of `container_id`),
    and iptables / nftables lines that name `container_id`.
    """
    found = []
    host = namespace_state(host_ns)
    for link in host["links"] if isinstance(host["links"], list) else []:
        kind = link.get("linkinfo", {}).get("info_kind")
        if kind == "veth" and link["ifname"] not in keep_links:
            found.append(f"host veth {link['ifname']} (master {link.get('master')})")
    if container_ns and Path(f"/run/netns/{container_ns}").exists():
        links = namespace_state(container_ns)["links"]
        if any(link.get("ifname") == ifname for link in links if isinstance(link, dict)):
            found.append(f"container interface {ifname} in {container_ns}")
    if container_id:
        # Whole IDs only: "race1" must not match "race14" (IDs are made of [A-Za-z0-9_.-]).
        # The spoof-check chains are named cni-br-iface-<id>-<ifname>.
        named = re.compile(r"(?<![\w.-])" + re.escape(container_id) + r"(?![\w.-])|-"
                           + re.escape(f"{container_id}-{ifname}") + r"\b")
        for section in ("iptables", "ip6tables", "nftables"):
            found += [f"{section}: {line.strip()}" for line in host[section] if named.search(line)]
    found += [f"lease {path.name}: {content!r}" for path, content in leases(data_dir, network)
              if container_id is None or content.split("\r\n")[0].strip() == container_id]
    return found


def leases(data_dir, network):
    """(path, content) of every lease file (named by its address) of `network` under `data_dir`."""
    if not data_dir or not network:
        return []
    directory = Path(data_dir) / network
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and _is_address(path.name):
            found.append((path, path.read_bytes().decode(errors="replace")))
    return found


def _is_address(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class IsolatedHost:
    """A "host" network namespace with its own data dir, where plugins run as on a real node.

    Plugins are exec'd inside the host namespace (`ip netns exec`, which execs in place, so a
    Popen's pid is the plugin's), containers are further namespaces. `close()` removes every
    namespace and file, whatever state a test left them in.
    """

    def __init__(self, prefix="swcni"):
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"{prefix}-{os.getpid()}-{self.tag}"
        self.name = f"{self.prefix}-host"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.data_dir = self.tmp / "data"
        self.bridge = "br" + self.tag
        self.containers = []
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")

    def container(self):
        """A new container namespace; returns its name (its path is /run/netns/<name>)."""
        name = f"{self.prefix}-c{len(self.containers)}"
        _ip("netns", "add", name)
        self.containers.append(name)
        return name

    def remove_container(self, name):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def environment(self, command, container_id="", netns="", ifname="eth0", args=None, bin_dir=None):
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": container_id, "CNI_NETNS": netns if netns.startswith("/") else (f"/run/netns/{netns}" if netns else ""),
               "CNI_IFNAME": ifname, "CNI_PATH": str(bin_dir)}
        if args:
            env["CNI_ARGS"] = args
        return env

    def start(self, executable, env, stdin):
        """Starts a plugin in its own session (so its children can be found) and returns the Popen."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, str(executable)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        return proc

    def run(self, executable, env, stdin, timeout=60):
        proc = subprocess.run(["ip", "netns", "exec", self.name, str(executable)], input=stdin,
                              capture_output=True, env=env, timeout=timeout)
        return proc

    def close(self):
        for name in self.containers + [self.name]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.tmp)], capture_output=True)


def session_members(session_id):
    """Pids of live processes in a session (a killed plugin's orphaned children stay in it)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def lock_is_free(lock_path):
    """True when nobody holds the IPAM flock (a killed plugin's lock must be gone)."""
    if not Path(lock_path).exists():
        return True
    proc = subprocess.run(["flock", "-n", "-E", "99", str(lock_path), "true"], capture_output=True)
    return proc.returncode == 0


def _ip(*argv):
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {proc.stderr}")
