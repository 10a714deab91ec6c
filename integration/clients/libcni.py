"""Build and run the libcni test client (main.go beside this file) offline, GOPATH mode, against
Debian's golang-github-appc-cni-dev in /usr/share/gocode. The binary is cached by the hash of
its source, the Go version and the library version, so a test session builds it once."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from clients.common import debian_version, require_tool
from cnitest import REPO

SOURCE = Path(__file__).resolve().parent / "libcni" / "main.go"
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src/github.com/containernetworking/cni/libcni"
CACHE = REPO / ".build-clients"


def library_version() -> str:
    return debian_version("golang-github-appc-cni-dev")


def build_client() -> Path:
    go = require_tool("go", "golang-go")
    if not LIBRARY.is_dir():
        pytest.fail(f"libcni source missing at {LIBRARY}: install Debian package golang-github-appc-cni-dev")
    go_version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    key = hashlib.sha256(SOURCE.read_bytes() + go_version.encode() + library_version().encode()).hexdigest()[:16]
    binary = CACHE / f"libcni-client-{key}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOCACHE=str(CACHE / "go-cache"),
               GOFLAGS="", GOPROXY="off", CGO_ENABLED="0")
    partial = binary.with_suffix(".partial")
    proc = subprocess.run([go, "build", "-o", str(partial), str(SOURCE)], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the libcni client failed ({go_version}):\n{proc.stderr}")
    partial.rename(binary)
    return binary


class LibcniClient:
    def __init__(self, binary: Path, plugin_dir: Path, cache_dir: Path, node_netns: str):
        self.binary = binary
        self.plugin_dir = plugin_dir
        self.cache_dir = cache_dir
        self.node_netns = node_netns  # the client (and so the plugins) run in this "node" namespace

    def __call__(self, command, conflist=None, **flags):
        argv = ["ip", "netns", "exec", self.node_netns, str(self.binary), command,
                "-cni-path", str(self.plugin_dir), "-cache-dir", str(self.cache_dir)]
        if conflist is not None:
            argv += ["-conflist", str(conflist)]
        for key, value in flags.items():
            argv += [f"-{key.replace('_', '-')}", value if isinstance(value, str) else json.dumps(value)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        try:
            reply = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise AssertionError(f"libcni client printed no JSON (rc={proc.returncode}): "
                                 f"{proc.stdout!r} {proc.stderr!r}")
        reply["rc"] = proc.returncode
        reply["stderr"] = proc.stderr
        return reply
