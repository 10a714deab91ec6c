"""Install and Kubernetes packaging: `make install` with DESTDIR, the DaemonSet manifest's
structure, and deploy/install-cni.sh against temp directories (atomic, idempotent, correct
conflist for a given pod CIDR, pod CIDR read from the API). kubelet is not installable here:
nothing in this file claims the DaemonSet ran on a cluster."""

import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from cnitest import REPO

INSTALLER = REPO / "deploy" / "install-cni.sh"
MANIFEST = REPO / "deploy" / "daemonset.yaml"
OUR_PLUGINS = ("bridge", "host-local", "static", "loopback")
# Installed when present, by the installer image and `make install` alike.
OPTIONAL_PLUGINS = ("portmap", "ptp", "firewall", "tuning", "bandwidth", "cluster-ipam")
INSTALLED = OUR_PLUGINS + OPTIONAL_PLUGINS


def test_make_install_puts_the_plugins_under_destdir(tmp_path):
    built = REPO / "bin"
    missing = [p for p in INSTALLED + ("cnictl",) if not (built / p).is_file()]
    if missing:
        pytest.fail(f"bin/ lacks {missing}: run `make build` first")
    # -o build: install what bin/ holds, without a rebuild (make test has just built it).
    for destdir, bindir, expected in ((tmp_path / "default", None, "opt/cni/bin"),
                                      (tmp_path / "custom", "/usr/libexec/cni", "usr/libexec/cni")):
        argv = ["make", "-C", str(REPO), "-o", "build", "install", f"DESTDIR={destdir}"]
        if bindir:
            argv.append(f"CNI_BIN_DIR={bindir}")
        proc = subprocess.run(argv, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        target = destdir / expected
        # cnictl goes beside the plugins, with a link on the admin's PATH.
        assert sorted(p.name for p in target.iterdir()) == sorted(INSTALLED + ("cnictl",))
        for plugin in INSTALLED + ("cnictl",):
            installed = target / plugin
            assert installed.read_bytes() == (built / plugin).read_bytes()
            assert installed.stat().st_mode & 0o777 == 0o755
        assert os.readlink(destdir / "usr/local/sbin/cnictl") == "/" + expected + "/cnictl"


# ---- the DaemonSet manifest ----

@pytest.fixture(scope="module")
def manifest():
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def by_kind(documents, kind):
    found = [d for d in documents if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def test_daemonset_structure(manifest):
    ds = by_kind(manifest, "DaemonSet")
    assert ds["apiVersion"] == "apps/v1" and ds["metadata"]["namespace"] == "kube-system"
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True, "the pod network does not exist before the CNI is installed"
    assert {"operator": "Exists"} in pod["tolerations"], "must run on not-ready and tainted nodes"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    [container] = pod["containers"]
    assert container["command"] == ["/opt/swift-cni/install-cni.sh"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["SLEEP"]["value"] == "true"
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and security["readOnlyRootFilesystem"] is True

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    host_paths = {name: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v}
    assert sorted(host_paths.values()) == ["/etc/cni/net.d", "/opt/cni/bin"], "only the two CNI dirs of the host"
    mounted = {host_paths[name]: mounts[name] for name in host_paths}
    # The installer writes where the host directories are mounted.
    assert mounted["/opt/cni/bin"] == env["HOST_BIN_DIR"]["value"]
    assert mounted["/etc/cni/net.d"] == env["HOST_CONF_DIR"]["value"]
    assert all(not m.get("readOnly") for m in container["volumeMounts"] if m["name"] in host_paths)
    assert "/tmp" in mounts.values(), "the installer needs a writable /tmp with a read-only root"
    assert set(mounts) <= set(volumes), "every mount has a volume"


def test_daemonset_rbac_reads_only_nodes(manifest):
    ds = by_kind(manifest, "DaemonSet")
    account = by_kind(manifest, "ServiceAccount")
    role = by_kind(manifest, "ClusterRole")
    binding = by_kind(manifest, "ClusterRoleBinding")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]


# ---- the installer ----

@pytest.fixture
def node(tmp_path):
    """An image's plugin dir and a node's two CNI dirs, all temp."""
    source = tmp_path / "image-bin"
    source.mkdir()
    for plugin in OUR_PLUGINS:
        (source / plugin).write_text(f"#!/bin/sh\necho {plugin} v1\n")
    return {"source": source, "bin": tmp_path / "host/opt/cni/bin", "conf": tmp_path / "host/etc/cni/net.d"}


def install(node, check=True, **env):
    environment = {"PATH": os.environ["PATH"], "SRC_BIN_DIR": str(node["source"]),
                   "HOST_BIN_DIR": str(node["bin"]), "HOST_CONF_DIR": str(node["conf"])}
    environment.update({k: str(v) for k, v in env.items()})
    proc = subprocess.run(["sh", str(INSTALLER)], capture_output=True, text=True, env=environment, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def conflist(node):
    return json.loads((node["conf"] / "10-swift-cni.conflist").read_text())


def test_installer_writes_plugins_and_a_conflist_for_the_pod_cidr(node):
    out = install(node, POD_CIDR="10.244.3.0/24").stdout
    for plugin in OUR_PLUGINS:
        installed = node["bin"] / plugin
        assert installed.read_text() == (node["source"] / plugin).read_text()
        assert installed.stat().st_mode & 0o777 == 0o755
        assert f"installed {installed}" in out
    config = conflist(node)
    assert config["cniVersion"] == "1.0.0" and config["name"] == "swift-cni"
    [bridge] = config["plugins"]  # no portmap installed: none chained
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0"
    assert bridge["isGateway"] and bridge["isDefaultGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.244.3.0/24"}]]}
    assert sorted(os.listdir(node["conf"])) == ["10-swift-cni.conflist"]
    assert not [p for p in os.listdir(node["bin"]) if p.startswith(".")], "temp files left"


def test_installer_installs_the_optional_plugins_the_image_carries(node):
    for plugin in OPTIONAL_PLUGINS:
        (node["source"] / plugin).write_text(f"#!/bin/sh\necho {plugin} v1\n")
    install(node, POD_CIDR="10.244.3.0/24")
    assert sorted(os.listdir(node["bin"])) == sorted(INSTALLED)
    for plugin in OPTIONAL_PLUGINS:
        assert (node["bin"] / plugin).read_text() == (node["source"] / plugin).read_text()


def test_installer_refuses_an_image_without_a_required_plugin(node):
    (node["source"] / "host-local").unlink()
    proc = install(node, check=False, POD_CIDR="10.244.3.0/24")
    assert proc.returncode != 0 and "plugin host-local missing" in proc.stderr, proc.stderr
    assert not node["bin"].exists() or not os.listdir(node["bin"]), "nothing installed from a broken image"


def test_installer_dual_stack_options_and_portmap(node):
    (node["source"] / "portmap").write_text("#!/bin/sh\n")
    install(node, POD_CIDR="10.244.3.0/24,fd00:10:244:3::/64", BRIDGE_NAME="swbr0", MTU="1400",
            IP_MASQ="false", NETWORK_NAME="podnet")
    config = conflist(node)
    assert config["name"] == "podnet"
    bridge, portmap = config["plugins"]
    assert bridge["bridge"] == "swbr0" and bridge["mtu"] == 1400 and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


@pytest.mark.parametrize("env, message", [
    ({"POD_CIDR": "10.244.3.0"}, "invalid pod CIDR"),
    ({"POD_CIDR": "10.244.3.0/24,10.245.0.0/24"}, "two IPv4 pod CIDRs"),
    ({"POD_CIDR": "not-a-cidr/24"}, "invalid pod CIDR"),
    ({"POD_CIDR": "10.244.3.0/24", "MTU": "15x"}, "MTU must be a number"),
    ({"POD_CIDR": "10.244.3.0/24", "IP_MASQ": "yes"}, "IP_MASQ must be true or false"),
    ({}, "no pod CIDR"),
])
def test_installer_rejects_bad_input_and_writes_nothing(node, env, message):
    proc = install(node, check=False, **env)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (node["conf"] / "10-swift-cni.conflist").exists()


def test_installer_is_idempotent(node):
    install(node, POD_CIDR="10.244.3.0/24")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for d in (node["bin"], node["conf"]) for p in d.iterdir()}
    time.sleep(0.01)
    out = install(node, POD_CIDR="10.244.3.0/24").stdout
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for d in (node["bin"], node["conf"]) for p in d.iterdir()}
    assert before == after, "a second run with the same input must not touch any file"
    assert "installed" not in out and out.count("unchanged") == len(OUR_PLUGINS) + 1


def test_installer_replaces_a_running_binary_and_an_old_config_by_rename(node, tmp_path):
    # Overwriting an executable that runs fails with ETXTBSY; the installer renames a new file over
    # it, so the running process keeps its (old) inode and new execs get the new one.
    node["bin"].mkdir(parents=True)
    node["conf"].mkdir(parents=True)
    running = node["bin"] / "bridge"
    shutil.copy2(shutil.which("sleep"), running)
    (node["conf"] / "10-swift-cni.conflist").write_text('{"old": true}')
    (node["bin"] / ".host-local.swift-cni-tmp.999").write_text("debris of a killed run")
    process = subprocess.Popen([str(running), "30"])
    try:
        old_inode = running.stat().st_ino
        install(node, POD_CIDR="10.244.3.0/24")
        assert running.stat().st_ino != old_inode
        assert running.read_text() == (node["source"] / "bridge").read_text()
        assert process.poll() is None, "the running binary must not be disturbed"
        assert conflist(node)["plugins"][0]["type"] == "bridge"
        assert not [p for p in os.listdir(node["bin"]) if p.startswith(".")], "debris must be removed"
    finally:
        process.kill()
        process.wait()


def test_installer_reads_the_pod_cidrs_from_the_node_object(node, tmp_path):
    """With no POD_CIDR, the installer asks the API server for its Node (a local stand-in here)."""
    seen = {}

    class FakeAPIServer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["path"], seen["auth"] = self.path, self.headers.get("Authorization")
            body = json.dumps({"kind": "Node", "metadata": {"name": "node-7"},
                               "spec": {"podCIDR": "10.244.7.0/24",
                                        "podCIDRs": ["10.244.7.0/24", "fd00:10:244:7::/64"]}}, indent=2)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), FakeAPIServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("test-token")
    try:
        install(node, NODE_NAME="node-7", KUBE_API_URL=f"http://127.0.0.1:{server.server_port}",
                SERVICEACCOUNT_DIR=account)
    finally:
        server.shutdown()
    assert seen == {"path": "/api/v1/nodes/node-7", "auth": "Bearer test-token"}
    assert conflist(node)["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.7.0/24"}],
                                                              [{"subnet": "fd00:10:244:7::/64"}]]


def test_installer_puts_cnictl_beside_the_plugins_and_links_it(node, tmp_path):
    (node["source"] / "cnictl").write_text("#!/bin/sh\necho cnictl v1\n")
    sbin = tmp_path / "host/usr/local/sbin"
    out = install(node, POD_CIDR="10.244.3.0/24", HOST_SBIN_DIR=sbin, NODE_BIN_DIR="/opt/cni/bin").stdout
    assert (node["bin"] / "cnictl").read_text() == "#!/bin/sh\necho cnictl v1\n"
    assert os.access(node["bin"] / "cnictl", os.X_OK)
    assert os.readlink(sbin / "cnictl") == "/opt/cni/bin/cnictl"
    assert f"linked {sbin}/cnictl" in out
    again = install(node, POD_CIDR="10.244.3.0/24", HOST_SBIN_DIR=sbin).stdout
    assert f"unchanged {node['bin']}/cnictl" in again and f"unchanged {sbin}/cnictl" in again
    assert not [p for p in os.listdir(sbin) if p.startswith(".")], "no temp link left"
    # Without HOST_SBIN_DIR (the DaemonSet mounts only the two CNI dirs) there is no link.
    other = tmp_path / "other"
    plain = dict(node, bin=other / "bin", conf=other / "conf")
    install(plain, POD_CIDR="10.244.3.0/24")
    assert (other / "bin" / "cnictl").exists()
