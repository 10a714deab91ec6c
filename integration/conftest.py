"""pytest fixtures shared by the integration tests (root: they create network namespaces)."""

import os
import subprocess

import pytest

from cnitest import BIN_DIR, sh, unique


def pytest_collection_modifyitems(config, items):
    # These tests need root (namespaces, links, firewall rules). Skip loudly, never pass silently.
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root: they create network namespaces")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def built_plugins():
    missing = [
        p for p in ("bridge", "ptp", "host-local", "static", "loopback", "portmap", "firewall", "tuning", "bandwidth", "cluster-ipam")
        if not (BIN_DIR / p).exists()
    ]
    if missing and os.geteuid() == 0:
        pytest.fail(f"plugins not built in {BIN_DIR}: {missing} (run `make build`)")


class NetNS:
    """A network namespace created for one test and removed after it, even on failure."""

    def __init__(self, name):
        self.name = name
        self.path = f"/run/netns/{name}"

    def run(self, *argv, check=True):
        return sh("ip", "netns", "exec", self.name, *argv, check=check)


@pytest.fixture
def netns_factory():
    created = []

    def make(prefix="swcni"):
        name = unique(prefix + "-", 20)
        sh("ip", "netns", "add", name)
        created.append(name)
        ns = NetNS(name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    yield make
    for name in created:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns(netns_factory):
    return netns_factory()
