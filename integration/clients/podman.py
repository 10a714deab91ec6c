"""A private podman (CNI backend): its own containers.conf, storage, run dir and network config
dir under a temp dir, so the host's podman state is untouched. Networks it creates live in the
host namespace (that is what podman does); they get unique names and test ranges and are removed."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clients.common import delete_link, free_subnet, purge_firewall, remove_lease_dir
from cnitest import unique


class PodmanFailure(AssertionError):
    pass


class Podman:
    def __init__(self, base: Path, plugin_dir: Path, rootfs: Path):
        self.base = base
        self.plugin_dir = plugin_dir
        self.rootfs = rootfs
        self.network_dir = base / "net.d"
        self.networks = []  # (name, bridge, subnet) to remove at the end
        self.extra_bridges = []
        for sub in ("net.d", "tmp", "root", "runroot"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        # runc, not crun; no systemd (cgroupfs, file events); capped ulimits: the known needs of
        # these machines. The default network is never used (every run names its network) but
        # gets a test range anyway so a slip cannot put 10.88.0.0/16 on the host.
        (base / "containers.conf").write_text(f"""
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
runtime = "runc"
tmp_dir = "{base}/tmp"
static_dir = "{base}/root/libpod"
volume_path = "{base}/root/volumes"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{plugin_dir}"]
network_config_dir = "{self.network_dir}"
default_network = "{unique('swpmdef-', 20)}"
default_subnet = "{free_subnet()}"
""")
        (base / "storage.conf").write_text(f"""
[storage]
driver = "vfs"
graphroot = "{base}/root"
runroot = "{base}/runroot"
""")
        self.env = dict(os.environ, CONTAINERS_CONF=str(base / "containers.conf"),
                        CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
                        CONTAINERS_REGISTRIES_CONF=str(base / "registries.conf"))
        (base / "registries.conf").write_text("unqualified-search-registries = []\n")

    def __call__(self, *argv, check=True, timeout=90):
        proc = subprocess.run(["podman", *map(str, argv)], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise PodmanFailure(f"podman {' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                                f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc.stdout if check else proc

    def version(self) -> str:
        return self("version", "--format", "{{.Client.Version}}").strip()

    def create_network(self, subnet=None, extra=()) -> dict:
        """`podman network create` with a unique name and a free test range; returns its inspect."""
        name = unique("swpm-", 16)
        subnet = subnet or free_subnet()
        self("network", "create", "--subnet", subnet, *extra, name)
        info = json.loads(self("network", "inspect", name))[0]
        self.networks.append((name, info.get("network_interface"), subnet))
        return info

    def conflist(self, network: str) -> dict:
        return json.loads((self.network_dir / f"{network}.conflist").read_text())

    def add_conflist(self, conflist: dict, bridge: str, subnet: str):
        """A hand-written network (podman loads every conflist in its network config dir)."""
        (self.network_dir / f"{conflist['name']}.conflist").write_text(json.dumps(conflist, indent=2))
        self.networks.append((conflist["name"], bridge, subnet))

    def run(self, network, *command, name=None, options=()) -> str:
        name = name or unique("swpmc-", 16)
        container_id = self("run", "-d", "--name", name, "--network", network, "--cap-add", "NET_RAW",
                            *options, "--rootfs", self.rootfs, *command).strip()
        return container_id

    def exec(self, container, *command, check=True):
        return self("exec", container, *command, check=check)

    def addresses(self, container, ifname="eth0"):
        """IPv4 addresses of `ifname` inside the container, seen by its own `ip` (busybox)."""
        out = self.exec(container, "ip", "-o", "-4", "addr", "show", "dev", ifname, check=False)
        if not isinstance(out, str):
            out = out.stdout
        return [field.split("/")[0] for line in out.splitlines()
                for key, field in zip(line.split(), line.split()[1:]) if key == "inet"]

    def cleanup(self):
        self("rm", "-a", "-f", "-t", "0", check=False)
        for name, bridge, subnet in self.networks:
            self("network", "rm", "-f", name, check=False)
            (self.network_dir / f"{name}.conflist").unlink(missing_ok=True)
            if bridge:
                delete_link(bridge)
            remove_lease_dir(name)
            purge_firewall(f'"{name}"')
            purge_firewall(subnet.rsplit(".", 1)[0] + ".")
        # Container storage may still be mounted (vfs needs none, shm does): unmount before removal.
        mounts = Path("/proc/self/mounts").read_text().split("\n")
        for point in sorted((m.split()[1] for m in mounts if len(m.split()) > 1
                             and m.split()[1].startswith(str(self.base) + "/")), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


def find_podman_or_fail() -> str:
    path = shutil.which("podman")
    if not path:
        pytest.fail("podman not found: install Debian package podman (make deps)")
    for tool, package in (("runc", "runc"), ("conmon", "conmon")):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not found: install Debian package {package} (make deps)")
    return path
