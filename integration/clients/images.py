"""A busybox root filesystem and an OCI image of it, made locally: no registry is reachable.

The rootfs is Debian's busybox-static with its applets installed as symlinks, enough for
`sh`, `ip`, `ping`, `httpd` and `sleep`. The OCI image is written by hand (layout, index,
manifest, config, one uncompressed layer) as a tar that `ctr image import` accepts.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")
IMAGE_NAME = "docker.io/swiftcni/busybox:test"


def build_rootfs(root: Path) -> Path:
    """Populate `root` with busybox-static and its applet symlinks; returns `root`."""
    if not BUSYBOX.exists() or not _busybox_is_static():
        pytest.fail("a static /bin/busybox is needed: install Debian package busybox-static (make deps)")
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "www",
                "root", "var/www"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    # The applet list comes from busybox itself; link each where busybox would install it.
    listing = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True)
    for entry in listing.stdout.split():
        link = root / entry
        if entry == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "www/index.html").write_text("swift-cni client test\n")
    return root


def _busybox_is_static() -> bool:
    # Debian's dynamic `busybox` package also installs /bin/busybox; only the static one runs in
    # a rootfs without a libc.
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"], capture_output=True, text=True)
    return proc.stdout.endswith("installed")


def _blob(blobs: dict, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def write_oci_archive(rootfs: Path, archive: Path, name: str = IMAGE_NAME) -> Path:
    """Write an OCI image-layout tar of `rootfs` (one layer) to `archive`."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for path in sorted(rootfs.rglob("*")):
            info = layer.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                with open(path, "rb") as handle:
                    layer.addfile(info, handle)
            else:
                layer.addfile(info)
    layer_bytes = layer_buffer.getvalue()
    blobs = {}
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(blobs, layer_bytes)}
    config = {
        "architecture": _oci_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(blobs, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(blobs, json.dumps(manifest).encode()),
        "platform": {"architecture": config["architecture"], "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    with tarfile.open(archive, "w") as out:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    return archive


def _oci_architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
