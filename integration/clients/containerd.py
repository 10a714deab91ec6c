"""A private containerd (own root, state, socket under a temp dir) in a private mount namespace.

`ctr run --cni` reads the first file in /etc/cni/net.d and runs plugins from /opt/cni/bin, with
no flag to change either. So a process holds a private mount namespace (`unshare -m`) in which
those two paths (and /run/containerd, where shims and fifos go) are bind/tmpfs mounts over temp
dirs; containerd and every ctr command run inside it (`nsenter -m`). The host's mounts, CNI config
and plugin dir are untouched. Every plugin call is logged by a wrapper, to show what ctr sends."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

CALL_LOG = ".calls"
WRAPPER = """#!/bin/sh
# Records what the runtime sends (command, netns, container id), then runs the real plugin.
name=$(basename "$0")
printf '%s\\t%s\\t%s\\t%s\\n' "$name" "$CNI_COMMAND" "$CNI_NETNS" "$CNI_CONTAINERID" >> "$(dirname "$0")/.calls"
exec "$(dirname "$0")/.real/$name" "$@"
"""


class Containerd:
    def __init__(self, base: Path, plugin_dir: Path):
        self.base = base
        self.socket = base / "containerd.sock"
        self.net_dir = base / "net.d"
        self.bin_dir = base / "cni-bin"
        self.holder = None
        self.daemon = None
        self.created_run_dir = False
        self.net_dir.mkdir(parents=True, exist_ok=True)
        self._wrap_plugins(plugin_dir)

    def _wrap_plugins(self, plugin_dir: Path):
        real = self.bin_dir / ".real"
        real.mkdir(parents=True, exist_ok=True)
        for plugin in plugin_dir.iterdir():
            shutil.copy2(plugin, real / plugin.name)
            wrapper = self.bin_dir / plugin.name
            wrapper.write_text(WRAPPER)
            wrapper.chmod(0o755)
        (self.bin_dir / CALL_LOG).write_text("")

    def calls(self):
        """(plugin, command, netns, containerID) for every plugin exec so far."""
        lines = (self.bin_dir / CALL_LOG).read_text().splitlines()
        return [tuple((line.split("\t") + ["", "", "", ""])[:4]) for line in lines if line]

    def start(self):
        for path, package in (("/usr/bin/containerd", "containerd"), ("/usr/bin/ctr", "containerd"),
                              ("/usr/bin/containerd-shim-runc-v2", "containerd")):
            if not shutil.which(os.path.basename(path)):
                pytest.fail(f"{os.path.basename(path)} not found: install Debian package {package} (make deps)")
        if not shutil.which("runc"):
            pytest.fail("runc not found: install Debian package runc (make deps)")
        # ctr has no flag for these paths; the mounts that replace them need existing mount points.
        for path in ("/etc/cni/net.d",):
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
        if not os.path.isdir("/run/containerd"):
            os.makedirs("/run/containerd")
            self.created_run_dir = True
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        time.sleep(0.2)
        script = f"""set -e
mount --bind {self.net_dir} /etc/cni/net.d
mount -t tmpfs -o mode=0755 swcni-opt /opt
mkdir -p /opt/cni/bin
mount --bind {self.bin_dir} /opt/cni/bin
mount -t tmpfs -o mode=0711 swcni-run /run/containerd
"""
        self.inside("sh", "-c", script)
        config = self.base / "config.toml"
        config.write_text(f"""version = 2
root = "{self.base}/root"
state = "{self.base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base}/opt"
""")
        log = open(self.base / "containerd.log", "wb")
        self.daemon = subprocess.Popen(self._nsenter("containerd", "--config", str(config)), stdout=log,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                pytest.fail(f"containerd exited ({self.daemon.returncode}):\n{self.log_tail()}")
            if self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        pytest.fail(f"containerd did not answer on {self.socket} within 30 s:\n{self.log_tail()}")

    def log_tail(self, lines=30) -> str:
        path = self.base / "containerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _nsenter(self, *argv):
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *map(str, argv)]

    def inside(self, *argv, check=True, timeout=60):
        proc = subprocess.run(self._nsenter(*argv), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def ctr(self, *argv, check=True, timeout=60):
        return self.inside("ctr", "--address", self.socket, *argv, check=check, timeout=timeout)

    def ctr_popen(self, *argv, **kwargs):
        return subprocess.Popen(self._nsenter("ctr", "--address", self.socket, *argv), **kwargs)

    def version(self) -> str:
        return subprocess.run(["containerd", "--version"], capture_output=True, text=True).stdout.split()[2]

    def stop(self):
        if self.daemon and self.daemon.poll() is None:
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
                time.sleep(0.2)
                self.ctr("tasks", "delete", "-f", task, check=False)
            for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "delete", container, check=False)
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self._kill_own_shims()
        if self.holder and self.holder.poll() is None:
            self.holder.kill()  # the last process of the mount namespace: its mounts go with it
            self.holder.wait()
        if self.created_run_dir:
            try:
                os.rmdir("/run/containerd")
            except OSError:
                pass

    def _kill_own_shims(self):
        # Shims outlive containerd by design; ours are the ones started with our socket address.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass
