#!/usr/bin/env python3
"""swift-cni benchmark: our plugins (bin/) side by side with the reference (/usr/lib/cni).

Every plugin execution happens inside a dedicated "host" network namespace that this script
creates (the script itself enters it, with a private mount namespace whose /sys belongs to it,
as `ip netns exec` would arrange, so no per-run `ip` process is added to the timings). Bridges,
addresses and firewall rules therefore never touch the real host; they vanish with the namespace.
Container namespaces, bridge names and the ranges (10.201-10.214.x.x, fd00:bc::/32) are private.

Rounds alternate A B B A (ours, reference, reference, ours, ...) so that drift on a shared
machine hits both columns alike; before each round the plugin binaries (and any shared library
they load other than libc) are evicted from the page cache with posix_fadvise(DONTNEED).

See bench/README.md for what each row measures and how to read the table. stdlib only.
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGINS = ("bridge", "host-local", "static", "loopback", "portmap")
# Evicted before each round with PLUGINS (these have no start-up rows: the same file as ours).
SCENARIO_PLUGINS = ("ptp", "firewall", "tuning")
# The chain rows: bridge + portmap with two mappings (one tcp, one udp), per portmap backend.
PORTMAP_SCENARIOS = ("portmap-iptables", "portmap-nftables")
# podman's default chain (87-podman-bridge.conflist): bridge (ipMasq, hairpin) + portmap (one
# mapping) + firewall + tuning; tuning only when both implementations have it.
PODMAN_SCENARIO = "podman-default"
# containerd's default (CRI): the loopback network on lo, then 10-containerd-net.conflist, bridge
# (isGateway, ipMasq, promiscMode) + portmap (one mapping here); IPv4 only, in this column's range.
CONTAINERD_SCENARIO = "containerd-default"
CHAIN_SCENARIOS = PORTMAP_SCENARIOS + (PODMAN_SCENARIO, CONTAINERD_SCENARIO)
# The kubelet-like burst: this many pod sandboxes started at once through containerd's chain.
BURST_PODS = 30
PORTMAP_MAPPINGS = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 18081, "containerPort": 81, "protocol": "udp"}]
PLUGIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CNI_VERSION = "1.0.0"  # the newest version the reference (1.1.1) speaks; CHECK needs >= 0.4.0
PREFIX = "cnibench"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
RUN_TIMEOUT_S = 120
IO_ROOT = "/dev/shm"
GROUPS = ("startup", "single", "create-bridge", "leases", "rss", "throughput", "burst", "floor")

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def os_error(what):
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def sh(*argv, check=True, input=None):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# Running one program: posix_spawn with stdin/stdout/stderr as files.


class Run:
    __slots__ = ("status", "elapsed_s", "cpu_s", "stdout", "stderr", "faults")

    def __init__(self, status, elapsed_s, cpu_s, stdout, stderr, faults=None):
        self.status, self.elapsed_s, self.cpu_s = status, elapsed_s, cpu_s
        self.stdout, self.stderr = stdout, stderr
        self.faults = faults  # minor + major page faults of the run and the children it waited for

    @property
    def ok(self):
        return self.status == 0

    def describe(self):
        return f"exit {self.status}: {self.stdout.strip()[:400]!r} {self.stderr.strip()[:400]!r}"


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


class Spawner:
    """Spawns plugins cheaply (posix_spawn, files for the standard streams) and times them.

    The time of a run is from just before posix_spawn to wait4's return: it includes the
    spawn itself (measured on its own as the "spawn overhead" note) but no Python pipe handling.
    The stream files live on tmpfs and are opened (created, truncated) before the clock starts:
    file creation on a busy ext4 alone cost ~2 ms per run, the same in both columns, which would
    have pulled every ratio toward 1.
    The CPU time is user + system time of the child and of every descendant it waited for (the
    IPAM plugin, iptables): much less disturbed than wall time by other load on the machine.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.counter = 0

    def _prepare(self, argv, env, stdin: bytes):
        """Stream files for one run, opened: (argv, env, fds, out path, err path)."""
        self.counter += 1
        base = self.dir / str(self.counter % 4096)
        in_path, out_path, err_path = Path(f"{base}.in"), Path(f"{base}.out"), Path(f"{base}.err")
        in_path.write_bytes(stdin)
        fds = (os.open(in_path, os.O_RDONLY),
               os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
               os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        return argv, env, fds, out_path, err_path

    @staticmethod
    def _spawn(job):
        argv, env, fds = job[0], job[1], job[2]
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        return os.posix_spawn(argv[0], argv, env, file_actions=actions)

    @staticmethod
    def _collect(job, status, elapsed, rusage):
        for fd in job[2]:
            os.close(fd)
        code = os.waitstatus_to_exitcode(status)
        return Run(code, elapsed, rusage.ru_utime + rusage.ru_stime, job[3].read_text(errors="replace"),
                   job[4].read_text(errors="replace"), rusage.ru_minflt + rusage.ru_majflt)

    def run(self, argv, env, stdin=b""):
        job = self._prepare(argv, env, stdin)
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(RUN_TIMEOUT_S)
        pid = None
        try:
            start = time.perf_counter_ns()
            pid = self._spawn(job)
            _, status, rusage = os.wait4(pid, 0)
            elapsed = (time.perf_counter_ns() - start) / 1e9
        except _Timeout:
            os.kill(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            run = self._collect(job, status, RUN_TIMEOUT_S, rusage)
            run.stderr += f"\nkilled after {RUN_TIMEOUT_S} s"
            return run
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        return self._collect(job, status, elapsed, rusage)

    def run_many(self, jobs, parallel):
        """Runs (argv, env, stdin) jobs, at most `parallel` at a time; returns (runs, wall seconds)."""
        prepared = [self._prepare(argv, env, stdin) for argv, env, stdin in jobs]
        runs = [None] * len(prepared)
        running = {}
        pending = 0
        start = time.perf_counter_ns()
        try:
            while pending < len(prepared) or running:
                while pending < len(prepared) and len(running) < parallel:
                    running[self._spawn(prepared[pending])] = (pending, time.perf_counter_ns())
                    pending += 1
                pid, status, rusage = os.wait4(-1, 0)
                index, began = running.pop(pid)
                runs[index] = self._collect(prepared[index], status, (time.perf_counter_ns() - began) / 1e9, rusage)
        finally:
            for pid in running:  # only after an exception: leave no child behind
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
            for index, job in enumerate(prepared):
                if runs[index] is None:
                    for fd in job[2]:
                        os.close(fd)
        return runs, (time.perf_counter_ns() - start) / 1e9

    def run_chain(self, steps):
        """Runs one chain's steps one after another: `steps` is a generator that yields
        (argv, env, stdin), is sent each Run, and returns its result."""
        try:
            job = next(steps)
            while True:
                job = steps.send(self.run(*job))
        except StopIteration as done:
            return done.value

    def run_chains(self, chains):
        """All chains at once, each one step at a time (a runtime starting pods in parallel, each
        pod's plugins in order); returns (each chain's result, wall seconds until the last ends)."""
        results = [None] * len(chains)
        running = {}
        start = time.perf_counter_ns()

        def advance(index, run):
            try:
                job = chains[index].send(run) if run is not None else next(chains[index])
            except StopIteration as done:
                results[index] = done.value
                return
            prepared = self._prepare(*job)
            running[self._spawn(prepared)] = (index, prepared, time.perf_counter_ns())

        try:
            for index in range(len(chains)):
                advance(index, None)
            while running:
                pid, status, rusage = os.wait4(-1, 0)
                index, prepared, began = running.pop(pid)
                advance(index, self._collect(prepared, status, (time.perf_counter_ns() - began) / 1e9, rusage))
        finally:
            for pid, (_, prepared, _) in running.items():  # only after an exception
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
                for fd in prepared[2]:
                    os.close(fd)
        return results, (time.perf_counter_ns() - start) / 1e9


# ---------------------------------------------------------------------------------------------
# Page cache eviction.


def stripped_size(path: Path, workdir: Path):
    """Bytes of `path` once stripped (`strip` on a copy; its own size when strip fails)."""
    copy = workdir / "stripped"
    try:
        done = subprocess.run(["strip", "-o", str(copy), str(path)], capture_output=True).returncode == 0
        return copy.stat().st_size if done else path.stat().st_size
    finally:
        copy.unlink(missing_ok=True)


def shared_libraries(binary: Path):
    """Non-libc shared objects a binary loads (a statically linked one has none)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    except OSError:
        return []
    libraries = []
    for line in out.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            path = parts[1].split("(")[0].strip()
            name = os.path.basename(path)
            # libc and friends are mapped by this very script: fadvise cannot evict them.
            if not name.startswith(("libc.so", "libm.so", "libpthread", "libdl", "ld-linux", "libgcc_s")):
                libraries.append(Path(path))
    return libraries


def evict(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: Path):
    """Fraction of the file's pages in the page cache (mincore), to show the eviction worked."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        page = os.sysconf("SC_PAGE_SIZE")
        pages = (size + page - 1) // page
        vector = (ctypes.c_ubyte * pages)()
        try:
            if libc.mincore(address, size, vector) != 0:
                return None
            return sum(b & 1 for b in vector) / pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Namespaces.


class Namespaces:
    """The host namespace the plugins run in, the container namespaces, and the way back."""

    def __init__(self, tag, containers):
        self.tag = tag
        self.host = f"{PREFIX}-{tag}-host"
        self.containers = [f"{PREFIX}-{tag}-c{i}" for i in range(containers)]
        self.created = []
        self.original_net = None
        self.original_mnt = None
        self.entered = False

    def path(self, name):
        return f"/run/netns/{name}"

    def create(self):
        for name in [self.host, *self.containers]:
            sh("ip", "netns", "add", name)
            self.created.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")

    def enter_host(self):
        """Moves this process into the host netns, with a private mount namespace whose /sys
        shows that netns (what `ip netns exec` does per command, once for the whole run)."""
        self.original_net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.original_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(self.path(self.host), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise os_error("setns host netns")
        finally:
            os.close(fd)
        self.entered = True
        if libc.unshare(CLONE_NEWNS) != 0:
            raise os_error("unshare mount namespace")
        if libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
            raise os_error("make / a slave mount")
        if libc.umount2(b"/sys", MNT_DETACH) != 0:
            raise os_error("umount /sys")
        if libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None) != 0:
            raise os_error("mount sysfs")

    def leave_host(self):
        if not self.entered:
            return
        cwd = os.getcwd()
        if libc.setns(self.original_mnt, CLONE_NEWNS) != 0:
            raise os_error("setns back to the original mount namespace")
        if libc.setns(self.original_net, CLONE_NEWNET) != 0:
            raise os_error("setns back to the original netns")
        os.chdir(cwd)
        self.entered = False

    def destroy(self):
        self.leave_host()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created = []

    def clear_container(self, index):
        """After a failure: remove whatever interface a failed ADD/DEL left in the container."""
        subprocess.run(["ip", "-n", self.containers[index], "link", "del", "eth0"], capture_output=True)


def remove_stale(workroot: Path):
    """Namespaces and work dirs of earlier runs whose process is gone (a killed run)."""
    listing = Path("/run/netns")
    names = [p.name for p in listing.iterdir()] if listing.is_dir() else []
    for name in names:
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not pid_alive(int(parts[1])):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if workroot.is_dir():
        for entry in workroot.iterdir():
            if entry.name.isdigit() and not pid_alive(int(entry.name)):
                shutil.rmtree(entry, ignore_errors=True)
    if os.path.isdir(IO_ROOT):
        for entry in Path(IO_ROOT).glob(f"{PREFIX}-io-*"):
            pid = entry.name.rsplit("-", 1)[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---------------------------------------------------------------------------------------------
# The two implementations and their configs.


class Implementation:
    def __init__(self, key, label, directory: Path, index, workdir: Path):
        self.key, self.label, self.dir = key, label, directory
        self.index = index  # 1 or 2: picks this column's bridge, ranges and state directory
        self.bridge = f"cbr{os.getpid() % 100000}{key[0]}"
        self.net = f"{PREFIX}-{key}"
        self.v4 = f"10.20{index}"
        self.v6 = f"fd00:bc:{index}"
        self.data_dir = workdir / f"state-{key}"
        self.lease_dir = workdir / f"leases-{key}"

    def binary(self, plugin):
        return str(self.dir / plugin)

    def env(self, command, container_id="", netns="", ifname="eth0"):
        return {
            "PATH": PLUGIN_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.dir),
        }

    def host_local(self, dual=False):
        ranges = [[{"subnet": f"{self.v4}.0.0/16"}]]
        routes = [{"dst": "0.0.0.0/0"}]
        if dual:
            ranges.append([{"subnet": f"{self.v6}::/64"}])
            routes.append({"dst": "::/0"})
        return {"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": str(self.data_dir)}

    def config(self, scenario, bridge=None):
        config = {"cniVersion": CNI_VERSION, "name": self.net, "type": "bridge", "bridge": bridge or self.bridge,
                  "isGateway": True}
        if scenario == "static":
            config["ipam"] = {"type": "static", "routes": [{"dst": "0.0.0.0/0"}],
                              "addresses": [{"address": f"{self.v4}.200.10/16", "gateway": f"{self.v4}.0.1"}]}
        else:
            config["ipam"] = self.host_local(dual=scenario == "dual")
        if scenario in ("masq-iptables", "masq-nftables"):
            config["ipMasq"] = True
            config["ipMasqBackend"] = scenario.split("-")[1]
        if scenario == PODMAN_SCENARIO:
            config["ipMasq"] = True
            config["hairpinMode"] = True
        if scenario == CONTAINERD_SCENARIO:
            # Its own bridge: promiscMode stays set on the bridge, which the other scenarios'
            # CHECK would find differs from their config.
            config["bridge"] = bridge or f"{self.bridge}k"
            config["ipMasq"] = True
            config["promiscMode"] = True
        if scenario.startswith("ptp"):
            # Its own range (no bridge, the gateway goes on every host veth as /32).
            config = {"cniVersion": CNI_VERSION, "name": f"{self.net}-ptp", "type": "ptp",
                      "ipam": dict(self.host_local(dual=scenario == "ptp-dual"), dataDir=str(self.data_dir))}
            config["ipam"]["ranges"] = [[{"subnet": f"10.21{self.index + 2}.0.0/16"}]]
            if scenario == "ptp-dual":
                config["ipam"]["ranges"].append([{"subnet": f"fd00:bc:{self.index + 2}::/64"}])
        return config

    def lease_config(self, leases):
        return {"cniVersion": CNI_VERSION, "name": f"leases-{leases}", "type": "bridge",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.21{self.index}.0.0/16"}]],
                         "dataDir": str(self.lease_dir)}}

    def prefill(self, leases):
        """`leases` lease files in the reference's format, the last one recorded as last reserved."""
        directory = self.lease_dir / f"leases-{leases}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        last = None
        for n in range(leases):
            value = n + 2  # .0.1 is the gateway
            last = f"10.21{self.index}.{value >> 8}.{value & 255}"
            fd = os.open(directory / last, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, f"prefill-{n:05d}\r\neth0".encode())
            os.close(fd)
        if last:
            (directory / "last_reserved_ip.0").write_text(last)
        return directory


def masquerade_in_use(container_id):
    """Which firewall holds masquerade rules for this container right after its ipMasq ADD (both
    backends name the container ID in a comment): the reference 1.1.1 predates ipMasqBackend
    (v1.6.0), ignores the key and always uses iptables."""
    seen = []
    if container_id in sh("iptables-save", "-t", "nat", check=False):
        seen.append("iptables")
    if container_id in sh("nft", "list", "table", "inet", "cni_plugins_masquerade", check=False):
        seen.append("nftables")
    return "+".join(seen) or "none"


def portmap_in_use(container_id):
    """Which firewall holds portmap's rules for this container right after its ADD."""
    seen = []
    if f'id: \\"{container_id}\\"' in sh("iptables-save", "-t", "nat", check=False):
        seen.append("iptables")
    if f'"{container_id}"' in sh("nft", "list", "table", "ip", "cni_hostport", check=False):
        seen.append("nftables")
    return "+".join(seen) or "none"


def with_prev_result(config, add_stdout):
    merged = dict(config)
    merged["prevResult"] = json.loads(add_stdout)
    return merged


def encode(config):
    return json.dumps(config).encode()


# ---------------------------------------------------------------------------------------------
# Measurements.


class Samples:
    def __init__(self):
        self.values = []
        self.failures = 0
        self.first_error = None

    def add(self, value):
        self.values.append(value)

    def fail(self, message):
        self.failures += 1
        if self.first_error is None:
            self.first_error = message

    def summary(self):
        values = self.values
        return {
            "samples": values,
            "median": statistics.median(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "failures": self.failures,
            "first_error": self.first_error,
        }


class Bench:
    def __init__(self, args, implementations, spawner, namespaces, floor_binary, workdir):
        self.args = args
        self.impls = implementations
        self.spawner = spawner
        self.ns = namespaces
        self.floor = floor_binary
        self.workdir = workdir
        self.samples = {}  # (row id, impl key) -> Samples
        self.rows = []  # row definitions in table order
        self.counter = 0
        self.floor_bridge = f"cbr{os.getpid() % 100000}f"
        self.masq_seen = {}  # (impl, scenario) -> the firewall machinery an ADD actually used
        self.notes = {}  # what the table prints below the rows (cnictl's size, file counts)
        with_tuning = all(os.access(impl.dir / "tuning", os.X_OK) for impl in implementations.values())
        self.podman_chain_plugins = ["portmap", "firewall"] + (["tuning"] if with_tuning else [])
        self.define_rows()

    # Row definitions: id, label, unit, kind ("time" | "rate" | "rss"), target.
    def define_rows(self):
        rows = self.rows
        for plugin in PLUGINS:
            rows.append(dict(id=f"startup-{plugin}", label=f"start-up: {plugin} VERSION", unit="ms", kind="time",
                             target=("ratio", "<=", 0.9)))
        for plugin in PLUGINS:
            # Issue #17's cold-start target: the first exec after a boot or memory pressure.
            rows.append(dict(id=f"startup-cold-{plugin}", label=f"start-up cold (evicted): {plugin}", unit="ms",
                             kind="time", target=("ratio", "<=", 1.0)))
        rows.append(dict(id="cold-podman-ADD", label="cold (evicted): podman chain ADD, first pod", unit="ms",
                         kind="time", target=None))
        scenarios = [
            ("base", "bridge + host-local v4", {"ADD": ("ratio", "<=", 0.4), "DEL": ("ratio", "<=", 0.9)}),
            ("masq-iptables", "ipMasq iptables", {"ADD": ("ratio", "<=", 0.3), "DEL": ("ratio", "<=", 0.4)}),
            ("masq-nftables", "ipMasq nftables", {"ADD": ("ratio", "<=", 0.3), "DEL": ("ratio", "<=", 0.4)}),
            ("dual", "dual-stack (host-local v4+v6)", {}),
            ("static", "bridge + static", {}),
            ("ptp", "ptp + host-local v4", {"ADD": ("ratio", "<=", 0.4), "DEL": ("ratio", "<=", 0.9)}),
            ("ptp-dual", "ptp dual-stack", {}),
            ("portmap-iptables", "bridge + portmap iptables, 2 mappings",
             {"ADD": ("ratio", "<=", 0.3), "DEL": ("ratio", "<=", 0.4)}),
            ("portmap-nftables", "bridge + portmap nftables, 2 mappings",
             {"ADD": ("ratio", "<=", 0.3), "DEL": ("ratio", "<=", 0.4)}),
            (PODMAN_SCENARIO, "podman default chain: bridge + " + " + ".join(self.podman_chain_plugins)
             + ", 1 mapping", {"ADD": ("ratio", "<=", 0.3), "DEL": ("ratio", "<=", 0.4)}),
            (CONTAINERD_SCENARIO, "containerd chain: loopback + bridge + portmap",
             {"ADD": ("ratio", "<=", 0.3), "DEL": ("ratio", "<=", 0.4)}),
        ]
        self.scenarios = [s[0] for s in scenarios]
        for key, label, targets in scenarios:
            # No CHECK row for portmap: the reference 1.1.1's CHECK fails on every IPv4 network.
            chain = key in CHAIN_SCENARIOS
            for command in ("ADD", "DEL") if chain else ("ADD", "CHECK", "DEL"):
                rows.append(dict(id=f"{key}-{command}", label=f"{label}: {command}", unit="ms", kind="time",
                                 target=targets.get(command)))
        rows.append(dict(id="create-bridge-ADD", label="ADD that creates the bridge", unit="ms", kind="time",
                         target=None))
        for parallel in self.args.parallel_levels:
            mode = "sequential" if parallel == 1 else f"{parallel} parallel"
            target = ("ratio", ">=", 2.0) if parallel == 16 else None
            rows.append(dict(id=f"throughput-{parallel}", label=f"throughput {self.args.containers} ctrs, {mode}: "
                             "ADD+DEL", unit="ctr/s", kind="rate", target=target, cpu=True))
            for phase in ("ADD", "DEL"):
                rows.append(dict(id=f"throughput-{parallel}-{phase}", label=f"  ... {phase} phase only",
                                 unit="ctr/s", kind="rate", target=None))
        rows.append(dict(id="burst-ADD", label=f"burst: {BURST_PODS} pods at once, containerd chain ADD",
                         unit="ctr/s", kind="rate", target=("ratio", ">=", 1.0), cpu=True))
        rows.append(dict(id="burst-DEL", label=f"  ... the {BURST_PODS} pods' DEL at once", unit="ctr/s",
                         kind="rate", target=None, cpu=True))
        for leases in self.args.lease_counts:
            for command in ("ADD", "DEL"):
                target = ("own-0-leases", "<=", 2.0) if leases == max(self.args.lease_counts) and leases > 0 else None
                rows.append(dict(id=f"leases-{leases}-{command}", label=f"host-local {command}, {leases:,} leases",
                                 unit="ms", kind="time", target=target))
        rows.append(dict(id="rss-bridge-ADD", label="peak RSS: bridge + host-local ADD", unit="MiB", kind="rss",
                         target=("ratio", "<=", 1.0)))
        rows.append(dict(id="rss-host-local-ADD", label="peak RSS: host-local ADD alone", unit="MiB", kind="rss",
                         target=None))
        rows.append(dict(id="faults-bridge-VERSION", label="page faults (minor+major): bridge VERSION",
                         unit="faults", kind="count", target=None))
        rows.append(dict(id="faults-bridge-ADD", label="page faults: bridge + host-local ADD", unit="faults",
                         kind="count", target=None))
        rows.append(dict(id="size-bridge", label="size, stripped: the bridge executable", unit="MiB", kind="size",
                         target=None))
        rows.append(dict(id="size-plugins", label="size, stripped: all plugins, links once", unit="MiB",
                         kind="size", target=None))

    def sample(self, row, impl_key):
        return self.samples.setdefault((row, impl_key), Samples())

    def unique_id(self, prefix):
        self.counter += 1
        return f"{prefix}-{os.getpid()}-{self.counter}"

    def record(self, row, impl, run, what):
        """Records a successful run's time (ms) or its failure."""
        samples = self.sample(row, impl.key)
        if run.ok:
            samples.add(run.elapsed_s * 1000)
            self.sample(f"{row}:cpu", impl.key).add(run.cpu_s * 1000)
        else:
            samples.fail(f"{what}: {run.describe()}")
        return run.ok

    # ---- one round for one implementation
    def round(self, impl, number):
        print(f"  round {number + 1}: {impl.label}", file=sys.stderr, flush=True)
        started = time.monotonic()
        self.evict_all()
        groups = self.args.only
        if "startup" in groups:
            self.startup(impl)
        if "startup" in groups and "single" in groups and PODMAN_SCENARIO in self.args.scenarios:
            self.cold_podman_chain(impl)
        if "single" in groups:
            for scenario in self.scenarios:
                if scenario in self.args.scenarios:
                    self.single(impl, scenario)
        if "create-bridge" in groups:
            self.create_bridge(impl)
        if "leases" in groups:
            self.leases(impl)
        if "rss" in groups:
            self.peak_rss(impl)
        if "throughput" in groups:
            self.throughput(impl)
        if "burst" in groups:
            self.burst(impl)
        if "floor" in groups:
            self.floor_round()
        print(f"    {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    def evict_all(self):
        for path in self.evictable:
            evict(path)

    def startup(self, impl):
        for plugin in PLUGINS:  # first exec of each binary after the eviction: cold
            # Evicted again right before: our plugins are one file under four names, which the
            # previous row's exec has just brought back into the page cache.
            evict(Path(impl.binary(plugin)))
            run = self.spawner.run([impl.binary(plugin)], impl.env("VERSION"))
            self.record(f"startup-cold-{plugin}", impl, run, f"{plugin} VERSION")
        for _ in range(self.args.iterations):
            for plugin in PLUGINS:
                run = self.spawner.run([impl.binary(plugin)], impl.env("VERSION"))
                self.record(f"startup-{plugin}", impl, run, f"{plugin} VERSION")

    def single(self, impl, scenario):
        if scenario in PORTMAP_SCENARIOS:
            return self.portmap_chain(impl, scenario)
        if scenario == PODMAN_SCENARIO:
            return self.podman_chain(impl)
        if scenario == CONTAINERD_SCENARIO:
            return self.containerd_chain(impl)
        config = impl.config(scenario)
        plugin = config["type"]
        netns = self.ns.path(self.ns.containers[0])
        for _ in range(self.args.iterations):
            cid = self.unique_id(scenario)
            add = self.spawner.run([impl.binary(plugin)], impl.env("ADD", cid, netns), encode(config))
            ok = self.record(f"{scenario}-ADD", impl, add, f"{scenario} ADD")
            after = with_prev_result(config, add.stdout) if ok else config
            if ok and scenario.startswith("masq") and (impl.key, scenario) not in self.masq_seen:
                self.masq_seen[(impl.key, scenario)] = masquerade_in_use(cid)
            if ok:
                check = self.spawner.run([impl.binary(plugin)], impl.env("CHECK", cid, netns), encode(after))
                self.record(f"{scenario}-CHECK", impl, check, f"{scenario} CHECK")
            delete = self.spawner.run([impl.binary(plugin)], impl.env("DEL", cid, netns), encode(after))
            if ok:
                self.record(f"{scenario}-DEL", impl, delete, f"{scenario} DEL")
            if not (ok and delete.ok):
                self.ns.clear_container(0)

    def portmap_chain(self, impl, scenario):
        """A runtime's chain: bridge ADD then portmap ADD (timed together as the chain's ADD),
        portmap DEL then bridge DEL (timed together). The reference 1.1.1 ignores
        `backend` and writes iptables rules on both rows (the table says which it used)."""
        bridge_config = impl.config("base")
        netns = self.ns.path(self.ns.containers[0])
        for _ in range(self.args.iterations):
            cid = self.unique_id(scenario)
            add = self.spawner.run([impl.binary("bridge")], impl.env("ADD", cid, netns), encode(bridge_config))
            if not add.ok:
                self.record(f"{scenario}-ADD", impl, add, f"{scenario} bridge ADD")
                self.ns.clear_container(0)
                continue
            portmap = {"cniVersion": CNI_VERSION, "name": impl.net, "type": "portmap",
                       "backend": scenario.split("-")[1], "runtimeConfig": {"portMappings": PORTMAP_MAPPINGS},
                       "prevResult": json.loads(add.stdout)}
            mapped = self.spawner.run([impl.binary("portmap")], impl.env("ADD", cid, netns), encode(portmap))
            ok = self.record(f"{scenario}-ADD", impl, Run(mapped.status, add.elapsed_s + mapped.elapsed_s,
                                                         add.cpu_s + mapped.cpu_s, mapped.stdout, mapped.stderr),
                             f"{scenario} portmap ADD")
            if ok and (impl.key, scenario) not in self.masq_seen:
                self.masq_seen[(impl.key, scenario)] = portmap_in_use(cid)
            unmapped = self.spawner.run([impl.binary("portmap")], impl.env("DEL", cid, netns), encode(portmap))
            after = with_prev_result(bridge_config, add.stdout)
            delete = self.spawner.run([impl.binary("bridge")], impl.env("DEL", cid, netns), encode(after))
            if ok:
                both = Run(unmapped.status or delete.status, unmapped.elapsed_s + delete.elapsed_s,
                           unmapped.cpu_s + delete.cpu_s, unmapped.stdout + delete.stdout,
                           unmapped.stderr + delete.stderr)
                self.record(f"{scenario}-DEL", impl, both, f"{scenario} DEL")
            if not (ok and unmapped.ok and delete.ok):
                self.ns.clear_container(0)

    def cold_podman_chain(self, impl):
        """The first pod after a boot or memory pressure: podman's chain ADD with every plugin it
        runs evicted first. Each reference plugin is its own file, read in on its first exec; ours
        are one file, read once for the whole chain."""
        for plugin in ["bridge", "host-local", *self.podman_chain_plugins]:
            evict(Path(impl.binary(plugin)))
        self.podman_chain(impl, iterations=1, add_row="cold-podman-ADD", del_row=None)

    def podman_chain(self, impl, iterations=None, add_row=f"{PODMAN_SCENARIO}-ADD",
                     del_row=f"{PODMAN_SCENARIO}-DEL"):
        """podman's default chain as libcni runs it: ADD bridge, portmap, firewall(, tuning), each
        with the previous result (timed together); DEL in reverse order with the final result.
        Recorded as `add_row` and `del_row` (None: not recorded)."""
        bridge_config = impl.config(PODMAN_SCENARIO)
        keys = {"portmap": {"capabilities": {"portMappings": True},
                            "runtimeConfig": {"portMappings": PORTMAP_MAPPINGS[:1]}},
                "firewall": {"backend": ""}, "tuning": {}}
        chained = [dict({"cniVersion": CNI_VERSION, "name": impl.net, "type": plugin}, **keys[plugin])
                   for plugin in self.podman_chain_plugins]
        netns = self.ns.path(self.ns.containers[0])
        for _ in range(iterations or self.args.iterations):
            cid = self.unique_id("podman")
            runs = [self.spawner.run([impl.binary("bridge")], impl.env("ADD", cid, netns), encode(bridge_config))]
            for config in chained:
                if not runs[-1].ok:
                    break
                config["prevResult"] = json.loads(runs[-1].stdout)
                runs.append(self.spawner.run([impl.binary(config["type"])], impl.env("ADD", cid, netns),
                                             encode(config)))
            ok = self.record(add_row, impl, self.combined(runs), f"{PODMAN_SCENARIO} ADD")
            final = runs[-1].stdout if ok else runs[0].stdout
            deletes = []
            for config in reversed(chained):
                if "prevResult" in config and runs[0].ok:
                    config["prevResult"] = json.loads(final)
                    deletes.append(self.spawner.run([impl.binary(config["type"])], impl.env("DEL", cid, netns),
                                                    encode(config)))
            if runs[0].ok:
                after = with_prev_result(bridge_config, final)
                deletes.append(self.spawner.run([impl.binary("bridge")], impl.env("DEL", cid, netns), encode(after)))
            if ok and del_row:
                self.record(del_row, impl, self.combined(deletes), f"{PODMAN_SCENARIO} DEL")
            elif ok and not all(run.ok for run in deletes):
                self.sample(add_row, impl.key).fail(f"{PODMAN_SCENARIO} DEL after the ADD failed")
            if not (ok and all(run.ok for run in deletes)):
                self.ns.clear_container(0)
            for config in chained:
                config.pop("prevResult", None)

    def containerd_add(self, impl, cid, netns, host_port=PORTMAP_MAPPINGS[0]["hostPort"]):
        """containerd's CRI sandbox set-up as go-cni runs it: the loopback network on lo, then
        the conflist, bridge then portmap with bridge's result. A chain for Spawner.run_chain:
        returns the runs and the final result (None when a step failed)."""
        bridge_config = impl.config(CONTAINERD_SCENARIO)
        runs = [(yield ([impl.binary("loopback")], impl.env("ADD", cid, netns, "lo"),
                        encode(self.loopback_config)))]
        if runs[-1].ok:
            runs.append((yield ([impl.binary("bridge")], impl.env("ADD", cid, netns), encode(bridge_config))))
        if runs[-1].ok:
            portmap = self.containerd_portmap(impl, host_port, runs[-1].stdout)
            runs.append((yield ([impl.binary("portmap")], impl.env("ADD", cid, netns), encode(portmap))))
        return runs, (runs[-1].stdout if len(runs) == 3 and runs[-1].ok else None)

    def containerd_del(self, impl, cid, netns, final, host_port=PORTMAP_MAPPINGS[0]["hostPort"]):
        """The sandbox's teardown in go-cni's order: loopback, then the conflist in reverse
        (portmap, bridge), each with the cached final result (or none when the ADD failed)."""
        bridge_config = impl.config(CONTAINERD_SCENARIO)
        portmap = self.containerd_portmap(impl, host_port, final)
        if final:
            bridge_config["prevResult"] = json.loads(final)
        runs = [(yield ([impl.binary("loopback")], impl.env("DEL", cid, netns, "lo"),
                        encode(self.loopback_config)))]
        runs.append((yield ([impl.binary("portmap")], impl.env("DEL", cid, netns), encode(portmap))))
        runs.append((yield ([impl.binary("bridge")], impl.env("DEL", cid, netns), encode(bridge_config))))
        return runs

    loopback_config = {"cniVersion": CNI_VERSION, "name": "cni-loopback", "type": "loopback"}

    @staticmethod
    def containerd_portmap(impl, host_port, previous):
        config = {"cniVersion": CNI_VERSION, "name": impl.net, "type": "portmap",
                  "capabilities": {"portMappings": True},
                  "runtimeConfig": {"portMappings": [dict(PORTMAP_MAPPINGS[0], hostPort=host_port)]}}
        if previous:
            config["prevResult"] = json.loads(previous)
        return config

    def containerd_chain(self, impl):
        netns = self.ns.path(self.ns.containers[0])
        for _ in range(self.args.iterations):
            cid = self.unique_id("containerd")
            runs, final = self.spawner.run_chain(self.containerd_add(impl, cid, netns))
            ok = self.record(f"{CONTAINERD_SCENARIO}-ADD", impl, self.combined(runs), f"{CONTAINERD_SCENARIO} ADD")
            deletes = self.spawner.run_chain(self.containerd_del(impl, cid, netns, final))
            if ok:
                self.record(f"{CONTAINERD_SCENARIO}-DEL", impl, self.combined(deletes), f"{CONTAINERD_SCENARIO} DEL")
            if not (ok and all(run.ok for run in deletes)):
                self.ns.clear_container(0)

    def burst(self, impl):
        """A kubelet-like burst: BURST_PODS sandboxes started at once through containerd's chain
        (each pod's plugins in order, the pods in parallel; each its own host port), then all
        torn down at once. Pods per second of wall time, until the last one is done."""
        ids = [self.unique_id("burst") for _ in range(BURST_PODS)]
        paths = [self.ns.path(self.ns.containers[i]) for i in range(BURST_PODS)]
        ports = [PORTMAP_MAPPINGS[0]["hostPort"] + 100 + i for i in range(BURST_PODS)]
        adds, add_s = self.spawner.run_chains(
            [self.containerd_add(impl, ids[i], paths[i], ports[i]) for i in range(BURST_PODS)])
        dels, del_s = self.spawner.run_chains(
            [self.containerd_del(impl, ids[i], paths[i], adds[i][1], ports[i]) for i in range(BURST_PODS)])
        for row, results, seconds in (("burst-ADD", [runs for runs, _ in adds], add_s), ("burst-DEL", dels, del_s)):
            samples = self.sample(row, impl.key)
            samples.add(BURST_PODS / seconds)
            runs = [run for chain in results for run in chain]
            self.sample(f"{row}:cpu", impl.key).add(sum(run.cpu_s for run in runs) * 1000 / BURST_PODS)
            for run in runs:
                if not run.ok:
                    samples.fail(f"burst {row}: {run.describe()}")
        if any(not run.ok for chain in [runs for runs, _ in adds] + dels for run in chain):
            for i in range(BURST_PODS):
                self.ns.clear_container(i)

    @staticmethod
    def combined(runs):
        """Consecutive plugin runs as one: times added, the first failure's status and output."""
        failed = next((run for run in runs if not run.ok), runs[-1])
        return Run(failed.status, sum(run.elapsed_s for run in runs), sum(run.cpu_s for run in runs),
                   failed.stdout, "".join(run.stderr for run in runs))

    def create_bridge(self, impl):
        netns = self.ns.path(self.ns.containers[0])
        for i in range(self.args.iterations):
            bridge = f"cbn{os.getpid() % 100000}{impl.key[0]}{i}"[:15]
            config = impl.config("base", bridge=bridge)
            cid = self.unique_id("newbr")
            add = self.spawner.run([impl.binary("bridge")], impl.env("ADD", cid, netns), encode(config))
            ok = self.record("create-bridge-ADD", impl, add, "ADD creating the bridge")
            after = with_prev_result(config, add.stdout) if ok else config
            delete = self.spawner.run([impl.binary("bridge")], impl.env("DEL", cid, netns), encode(after))
            if not (ok and delete.ok):
                self.ns.clear_container(0)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)

    def leases(self, impl):
        netns = self.ns.path(self.ns.containers[0])
        for leases in self.args.lease_counts:
            config = encode(impl.lease_config(leases))
            for _ in range(self.args.iterations):
                cid = self.unique_id("lease")
                add = self.spawner.run([impl.binary("host-local")], impl.env("ADD", cid, netns), config)
                ok = self.record(f"leases-{leases}-ADD", impl, add, f"host-local ADD at {leases} leases")
                delete = self.spawner.run([impl.binary("host-local")], impl.env("DEL", cid, netns), config)
                if ok:
                    self.record(f"leases-{leases}-DEL", impl, delete, f"host-local DEL at {leases} leases")

    def peak_rss(self, impl):
        """Peak RSS of one ADD: the process tree's ru_maxrss, read by `floor peak-rss` (see there
        why not straight from here). Separate runs, so the timed runs carry no launcher. Then
        the page faults of a VERSION and of an ADD (direct runs: wait4's rusage), and once per
        column the stripped sizes."""
        netns = self.ns.path(self.ns.containers[0])
        for _ in range(self.args.iterations):
            version = self.spawner.run([impl.binary("bridge")], impl.env("VERSION"))
            self.record_faults("faults-bridge-VERSION", impl, version, "bridge VERSION")
            cid = self.unique_id("faults")
            config = impl.config("base")
            add = self.spawner.run([impl.binary("bridge")], impl.env("ADD", cid, netns), encode(config))
            self.record_faults("faults-bridge-ADD", impl, add, "bridge ADD")
            after = with_prev_result(config, add.stdout) if add.ok else config
            delete = self.spawner.run([impl.binary("bridge")], impl.env("DEL", cid, netns), encode(after))
            if not (add.ok and delete.ok):
                self.ns.clear_container(0)
        if not self.sample("size-plugins", impl.key).values:
            self.sizes(impl)
        report = self.workdir / "peak-rss"
        cases = (("rss-bridge-ADD", "bridge", encode(impl.config("base"))),
                 ("rss-host-local-ADD", "host-local", encode(impl.lease_config(0))))
        for row, plugin, config in cases:
            for _ in range(self.args.iterations):
                cid = self.unique_id("rss")
                report.unlink(missing_ok=True)
                add = self.spawner.run([self.floor, "peak-rss", str(report), impl.binary(plugin)],
                                       impl.env("ADD", cid, netns), config)
                samples = self.sample(row, impl.key)
                if add.ok:
                    samples.add(int(report.read_text()) / 1024)
                else:
                    samples.fail(f"{plugin} ADD: {add.describe()}")
                delete = self.spawner.run([impl.binary(plugin)], impl.env("DEL", cid, netns), config)
                if plugin == "bridge" and not (add.ok and delete.ok):
                    self.ns.clear_container(0)

    def record_faults(self, row, impl, run, what):
        if run.ok:
            self.sample(row, impl.key).add(run.faults)
        else:
            self.sample(row, impl.key).fail(f"{what}: {run.describe()}")

    def sizes(self, impl):
        """Stripped sizes (MiB): the bridge executable, and every plugin both columns install,
        each distinct file once (ours are hard links of one multi-call binary). cnictl, ours
        only, goes below the table."""
        ours, reference = self.impls["ours"].dir, self.impls["reference"].dir
        names = sorted(p.name for p in ours.iterdir()
                       if p.name != "cnictl" and os.access(p, os.X_OK) and (reference / p.name).is_file())
        distinct = {}
        for name in names:
            path = impl.dir / name
            info = path.stat()
            distinct.setdefault((info.st_dev, info.st_ino), path)
        self.sample("size-plugins", impl.key).add(sum(stripped_size(p, self.workdir) for p in distinct.values())
                                                  / 2**20)
        self.sample("size-bridge", impl.key).add(stripped_size(impl.dir / "bridge", self.workdir) / 2**20)
        cnictl = impl.dir / "cnictl"
        if impl.key == "ours" and cnictl.is_file():
            self.notes["cnictl"] = stripped_size(cnictl, self.workdir) / 2**20
        self.notes[f"plugins-{impl.key}"] = len(names), len(distinct)

    def throughput(self, impl):
        config = encode(impl.config("base"))
        count = self.args.containers
        for parallel in self.args.parallel_levels:
            ids = [self.unique_id(f"tp{parallel}") for _ in range(count)]
            paths = [self.ns.path(self.ns.containers[i]) for i in range(count)]
            adds, add_s = self.spawner.run_many(
                [([impl.binary("bridge")], impl.env("ADD", ids[i], paths[i]), config) for i in range(count)],
                parallel)
            dels, del_s = self.spawner.run_many(
                [([impl.binary("bridge")], impl.env("DEL", ids[i], paths[i]), config) for i in range(count)],
                parallel)
            failed = [run for run in adds + dels if not run.ok]
            row = f"throughput-{parallel}"
            cpu_ms = sum(run.cpu_s for run in adds + dels) * 1000 / count
            self.sample(f"{row}:cpu", impl.key).add(cpu_ms)  # CPU per container, ADD + DEL
            for key, seconds in ((row, add_s + del_s), (f"{row}-ADD", add_s), (f"{row}-DEL", del_s)):
                samples = self.sample(key, impl.key)
                samples.add(count / seconds)
                for run in failed:
                    samples.fail(f"throughput x{parallel}: {run.describe()}")
            if failed:
                for i in range(count):
                    self.ns.clear_container(i)

    def floor_round(self):
        netns = self.ns.path(self.ns.containers[0])
        lease_dir = self.workdir / "floor-leases"
        lease_dir.mkdir(exist_ok=True)
        env = {"PATH": PLUGIN_PATH}
        for i in range(self.args.iterations):
            address = f"10.203.0.{10 + i}"
            lease = str(lease_dir / address)
            add = self.spawner.run([self.floor, "add", netns, "eth0", f"vfloor{i}", self.floor_bridge,
                                    f"{address}/16", "10.203.0.1", lease, self.unique_id("floor")], env)
            self.record_floor("floor-ADD", add)
            delete = self.spawner.run([self.floor, "del", netns, "eth0", lease], env)
            self.record_floor("floor-DEL", delete)
            if not (add.ok and delete.ok):
                self.ns.clear_container(0)
                Path(lease).unlink(missing_ok=True)
            noop = self.spawner.run([self.floor, "noop"], env)
            self.record_floor("spawn-overhead", noop)
        # The kernel's own limit for the throughput rows: the same containers, the floor's work only.
        parallel, count = max(self.args.parallel_levels), self.args.containers
        addresses = [f"10.203.{1 + i // 250}.{10 + i % 250}" for i in range(count)]
        leases = [str(lease_dir / address) for address in addresses]
        adds, add_s = self.spawner.run_many(
            [([self.floor, "add", self.ns.path(self.ns.containers[i]), "eth0", f"vflt{i}", self.floor_bridge,
               f"{addresses[i]}/16", "10.203.0.1", leases[i], f"floor-{i}"], env, b"")
             for i in range(count)], parallel)
        dels, del_s = self.spawner.run_many(
            [([self.floor, "del", self.ns.path(self.ns.containers[i]), "eth0", leases[i]], env, b"")
             for i in range(count)], parallel)
        samples = self.sample("floor-throughput", "floor")
        failed = [run for run in adds + dels if not run.ok]
        if failed:
            samples.fail(failed[0].describe())
            for i in range(count):
                self.ns.clear_container(i)
                Path(leases[i]).unlink(missing_ok=True)
        else:
            samples.add(count / (add_s + del_s))

    def record_floor(self, row, run):
        samples = self.sample(row, "floor")
        if run.ok:
            samples.add(run.elapsed_s * 1000)
        else:
            samples.fail(run.describe())

    # ---- set-up done once, before the rounds
    def prepare(self):
        sh("ip", "link", "add", self.floor_bridge, "type", "bridge")
        sh("ip", "addr", "add", "10.203.0.1/16", "dev", self.floor_bridge)
        sh("ip", "link", "set", self.floor_bridge, "up")
        started = time.monotonic()
        for impl in self.impls.values():
            for leases in self.args.lease_counts if "leases" in self.args.only else ():
                impl.prefill(leases)
        if "leases" in self.args.only and max(self.args.lease_counts) > 0:
            print(f"  lease files written in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        # One untimed ADD/DEL per column creates its bridge and warms the kernel paths alike.
        netns = self.ns.path(self.ns.containers[0])
        for impl in self.impls.values():
            config = impl.config("base")
            cid = self.unique_id("warmup")
            add = self.spawner.run([impl.binary("bridge")], impl.env("ADD", cid, netns), encode(config))
            if not add.ok:
                raise RuntimeError(f"{impl.label}: warm-up ADD failed: {add.describe()}")
            self.spawner.run([impl.binary("bridge")], impl.env("DEL", cid, netns), encode(config))
            if CONTAINERD_SCENARIO in self.args.scenarios or "burst" in self.args.only:
                cid = self.unique_id("warmup")  # creates containerd's bridge, untimed
                runs, final = self.spawner.run_chain(self.containerd_add(impl, cid, netns))
                if final is None:
                    raise RuntimeError(f"{impl.label}: containerd chain warm-up ADD failed: "
                                       f"{self.combined(runs).describe()}")
                self.spawner.run_chain(self.containerd_del(impl, cid, netns, final))
        self.evictable = []
        for impl in self.impls.values():
            for plugin in PLUGINS + SCENARIO_PLUGINS:
                binary = Path(impl.binary(plugin))
                if plugin in SCENARIO_PLUGINS and not binary.exists():
                    continue  # an older build without it (its rows then fail, the rest is measured)
                self.evictable.append(binary)
                self.evictable.extend(shared_libraries(binary))
        self.evictable.append(Path(self.floor))
        self.evictable = list(dict.fromkeys(self.evictable))

    def eviction_check(self):
        self.evict_all()
        return {str(path): resident_fraction(path) for path in self.evictable}

    # ---- results
    def results(self):
        out = []
        for row in self.rows:
            ours = self.sample(row["id"], "ours").summary()
            reference = self.sample(row["id"], "reference").summary()
            ratio = None
            if ours["median"] and reference["median"]:
                ratio = ours["median"] / reference["median"]
            entry = dict(row, ours=ours, reference=reference, ratio=ratio)
            if row.get("cpu", row["kind"] == "time"):
                cpu = {key: self.sample(f"{row['id']}:cpu", key).summary() for key in ("ours", "reference")}
                entry["cpu_ms"] = cpu
                entry["cpu_ratio"] = (cpu["ours"]["median"] / cpu["reference"]["median"]
                                      if cpu["ours"]["median"] and cpu["reference"]["median"] else None)
            entry["target"], entry["met"], entry["target_value"] = self.judge(row, ratio)
            out.append(entry)
        floor = {key: self.sample(key, "floor").summary()
                 for key in ("floor-ADD", "floor-DEL", "floor-throughput", "spawn-overhead")}
        return out, floor

    def judge(self, row, ratio):
        target = row["target"]
        if not target:
            return None, None, None
        basis, op, limit = target
        if basis == "ratio":
            value = ratio
            text = f"ours/ref {op} {limit:g}x"
        else:  # host-local at the most leases vs our own time at 0 leases
            command = row["id"].rsplit("-", 1)[1]
            zero = self.sample(f"leases-0-{command}", "ours").summary()["median"]
            mine = self.sample(row["id"], "ours").summary()["median"]
            value = mine / zero if mine and zero else None
            text = f"ours/ours@0 {op} {limit:g}x"
        if value is None:
            return text, None, None
        met = value <= limit if op == "<=" else value >= limit
        return text, met, value


# ---------------------------------------------------------------------------------------------
# Output.


def fmt(value, kind):
    if value is None:
        return "-"
    if kind == "count":
        return f"{value:.0f}"
    if kind == "rate":
        return f"{value:.1f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(summary, kind):
    if summary["median"] is None:
        return "FAILED" if summary["failures"] else "-"
    text = f"{fmt(summary['median'], kind)} ({fmt(summary['min'], kind)}-{fmt(summary['max'], kind)})"
    if summary["failures"]:
        text += f" !{summary['failures']}"
    return text


def table(rows, floor, meta):
    lines = []
    header = f"{'measurement':<44} {'unit':<6} {'ours median (min-max)':>26} {'reference median (min-max)':>28} " \
             f"{'ours/ref':>8} {'cpu o/r':>7}  target"
    lines.append(header)
    lines.append("-" * len(header) + "-" * 24)
    for row in rows:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        target = ""
        if row["target"]:
            verdict = "MET" if row["met"] else ("NOT MET" if row["met"] is not None else "n/a")
            value = f" ({row['target_value']:.2f}x)" if row["target_value"] is not None and \
                row["target"].startswith("ours/ours") else ""
            target = f"{row['target']}{value}: {verdict}"
        cpu = f"{row['cpu_ratio']:.2f}x" if row.get("cpu_ratio") is not None else ""
        lines.append(f"{row['label']:<44} {row['unit']:<6} {cell(row['ours'], row['kind']):>26} "
                     f"{cell(row['reference'], row['kind']):>28} {ratio:>8} {cpu:>7}  {target}")
    lines.append("")
    fa, fd, spawn = floor["floor-ADD"], floor["floor-DEL"], floor["spawn-overhead"]
    if fa["median"] is not None:
        lines.append(f"floor (bench/floor: same kernel work, raw netlink, static C): ADD {cell(fa, 'time')} ms, "
                     f"DEL {cell(fd, 'time')} ms")
        by_id = {row["id"]: row for row in rows}
        for command, floor_summary in (("ADD", fa), ("DEL", fd)):
            row = by_id[f"base-{command}"]
            parts = []
            for key in ("ours", "reference"):
                if row[key]["median"] and floor_summary["median"]:
                    parts.append(f"{key} {row[key]['median'] / floor_summary['median']:.1f}x floor")
            if parts:
                lines.append(f"  bridge + host-local v4 {command}: " + ", ".join(parts))
    throughput = floor["floor-throughput"]
    if throughput["median"] is not None:
        lines.append(f"  floor throughput, {meta['containers']} ctrs ADD+DEL, {max(meta['parallel'])} parallel: "
                     f"{cell(throughput, 'rate')} ctr/s (the kernel's limit for the throughput rows)")
    if spawn["median"] is not None:
        lines.append(f"spawn overhead (posix_spawn + wait4 of a static no-op, included in every time above): "
                     f"{cell(spawn, 'time')} ms")
    if meta.get("cnictl_mib") is not None:
        counts = meta.get("plugin_files", {})
        lines.append(f"size, stripped: cnictl (ours only) {meta['cnictl_mib']:.2f} MiB; plugins counted: "
                     + ", ".join(f"{key} {names} names in {files} file(s)" for key, (names, files)
                                 in sorted(counts.items())))
    if meta.get("masquerade_seen"):
        lines.append("firewall holding the ipMasq / portmap rules after ADD: " +
                     ", ".join(f"{k}: {v}" for k, v in sorted(meta["masquerade_seen"].items())))
    met = [r for r in rows if r["met"] is True]
    missed = [r for r in rows if r["met"] is False]
    unmeasured = [r for r in rows if r["target"] and r["met"] is None]
    lines.append(f"targets met: {len(met)} of {len(met) + len(missed)}" +
                 (f"; not met: {', '.join(r['label'].strip() for r in missed)}" if missed else "") +
                 (f"; not measured: {len(unmeasured)}" if unmeasured else ""))
    failures = [(r["label"], key, r[key]) for r in rows for key in ("ours", "reference") if r[key]["failures"]]
    for label, key, summary in failures:
        lines.append(f"FAILURES {key} / {label.strip()}: {summary['failures']}, first: {summary['first_error']}")
    lines.append(f"load average before/after: {meta['load_before']} / {meta['load_after']}; CPU pressure "
                 f"(PSI some avg60) {meta['cpu_pressure_before']} / {meta['cpu_pressure_after']} % "
                 f"({meta['cpus']} CPUs, shared with anything else running: high values mean noisy times)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def build_floor(workdir: Path):
    source = REPO / "bench" / "floor" / "floor.c"
    for compiler in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if compiler and shutil.which(compiler):
            target = workdir / "floor"
            proc = subprocess.run([compiler, "-O2", "-static", "-o", str(target), str(source)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                return str(target)
            print(f"warning: {compiler} could not build the floor: {proc.stderr.strip()[:300]}", file=sys.stderr)
    raise RuntimeError("bench/floor/floor.c could not be compiled (cc, gcc or clang with a static libc is "
                       "needed: it is the floor and the peak-RSS launcher)")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, default=REPO / "bin", help="our plugins (default: bin/)")
    parser.add_argument("--reference", type=Path, default=Path("/usr/lib/cni"), help="reference plugins")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--rounds", type=int, help="rounds, alternating A B B A (default 8; quick 4)")
    parser.add_argument("--iterations", type=int, help="samples per measurement per round (default 5; quick 2)")
    parser.add_argument("--containers", type=int, help="containers per throughput run (default 100; quick 32)")
    parser.add_argument("--parallel", default="1,8,16", help="throughput parallelism levels (1 = sequential)")
    parser.add_argument("--leases", default="0,1000,10000,60000", help="existing lease counts for host-local")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness increment for the run and every plugin (default -10: less noise from "
                             "other work on a shared machine; 0 to leave it)")
    parser.add_argument("--realtime", action="store_true",
                        help="run everything SCHED_FIFO: times free of other load on a busy machine, but it "
                             "preempts everything else while plugins run (the kernel keeps 5%% for others)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"measurement groups to run, comma-separated (default all: {','.join(GROUPS)}); "
                             "rows of the others stay empty")
    parser.add_argument("--scenarios",
                        default="base,masq-iptables,masq-nftables,dual,static,ptp,ptp-dual,"
                                "portmap-iptables,portmap-nftables,podman-default,containerd-default",
                        help="the single ADD/CHECK/DEL scenarios to run (default all: base,masq-iptables,"
                             "masq-nftables,dual,static,ptp,ptp-dual,portmap-iptables,portmap-nftables,"
                             "podman-default,containerd-default); rows of the others stay empty")
    parser.add_argument("--json", type=Path,
                        help="where to write the JSON (default bench/results/latest.json; quick.json with --quick)")
    parser.add_argument("--workroot", type=Path, default=Path("/var/tmp/cnibench"),
                        help="state directories (on disk, like /var/lib/cni)")
    args = parser.parse_args(argv)
    args.json = args.json or REPO / "bench" / "results" / ("quick.json" if args.quick else "latest.json")
    args.rounds = args.rounds or (4 if args.quick else 8)
    args.iterations = args.iterations or (2 if args.quick else 5)
    args.containers = args.containers or (32 if args.quick else 100)
    args.parallel_levels = [int(x) for x in args.parallel.split(",")]
    args.lease_counts = sorted(int(x) for x in args.leases.split(","))
    args.only = set(args.only.split(","))
    args.scenarios = args.scenarios.split(",")
    if args.only - set(GROUPS):
        parser.error(f"unknown group(s): {', '.join(sorted(args.only - set(GROUPS)))}")
    if max(args.lease_counts) > 65000:
        parser.error("at most 65,000 leases fit the /16")
    return args


def cpu_pressure():
    """Share of the last minute in which some runnable task waited for a CPU (Linux PSI)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(line.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return None


def round_order(rounds):
    """A B B A A B B A ...: each column runs first and last equally often."""
    pattern = ["ours", "reference", "reference", "ours"]
    return [pattern[i % 4] for i in range(rounds)]


def _terminate(signum, frame):
    raise KeyboardInterrupt()  # so that the cleanup in main runs


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (it creates network namespaces)")
    for label, directory in (("ours", args.ours), ("reference", args.reference)):
        missing = [p for p in PLUGINS if not os.access(directory / p, os.X_OK)]
        if missing:
            sys.exit(f"bench: {label}: {', '.join(missing)} missing in {directory} "
                     "(run `make build`, or pass --ours /usr/lib/cni to check the harness)")
    remove_stale(args.workroot)
    workdir = args.workroot / str(os.getpid())
    workdir.mkdir(parents=True)
    # The harness's own stdin/stdout files: on tmpfs when there is one (see Spawner).
    io_dir = (Path(IO_ROOT) if os.path.isdir(IO_ROOT) else workdir) / f"{PREFIX}-io-{os.getpid()}"
    namespaces = Namespaces(str(os.getpid()), max(args.containers, BURST_PODS if "burst" in args.only else 1))
    signal.signal(signal.SIGTERM, _terminate)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cni_version": CNI_VERSION,
        "ours": str(args.ours),
        "reference": str(args.reference),
        "rounds": round_order(args.rounds),
        "iterations": args.iterations,
        "containers": args.containers,
        "parallel": args.parallel_levels,
        "leases": args.lease_counts,
        "nice": args.nice,
        "realtime": args.realtime,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu_pressure_before": cpu_pressure(),
        "git": sh("git", "-C", REPO, "describe", "--always", "--dirty", check=False).strip(),
    }
    try:
        if args.realtime:
            # SCHED_FIFO, inherited by every plugin run: other work no longer preempts them.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        elif args.nice:
            os.nice(args.nice)  # inherited by every plugin run, both columns alike
        print(f"bench: setting up ({args.containers} container namespaces"
              + (f", leases {', '.join(map(str, args.lease_counts))}" if "leases" in args.only else "") + ")",
              file=sys.stderr, flush=True)
        floor = build_floor(workdir)
        namespaces.create()
        namespaces.enter_host()
        sh("ip", "link", "set", "lo", "up")
        spawner = Spawner(io_dir)
        implementations = {
            "ours": Implementation("ours", "ours", args.ours.resolve(), 1, workdir),
            "reference": Implementation("reference", "reference", args.reference.resolve(), 2, workdir),
        }
        bench = Bench(args, implementations, spawner, namespaces, floor, workdir)
        bench.prepare()
        meta["resident_after_eviction"] = bench.eviction_check()
        for number, key in enumerate(meta["rounds"]):
            bench.round(implementations[key], number)
        rows, floor_results = bench.results()
        meta["cnictl_mib"] = bench.notes.get("cnictl")
        meta["plugin_files"] = {key: bench.notes[f"plugins-{key}"] for key in implementations
                                if f"plugins-{key}" in bench.notes}
        meta["masquerade_seen"] = {f"{impl} {scenario}": used for (impl, scenario), used in bench.masq_seen.items()}
    finally:
        namespaces.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(io_dir, ignore_errors=True)
        try:
            args.workroot.rmdir()  # only when no other run is using it
        except OSError:
            pass
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["cpu_pressure_after"] = cpu_pressure()
    text = table(rows, floor_results, meta)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows, "floor": floor_results, "table": text}, indent=1))
    print(f"\n(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
