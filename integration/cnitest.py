"""Shared helpers for the integration tests: run a plugin exactly as a runtime does.

A runtime execs the plugin with CNI_* variables and the config on stdin, reads stdout (a
result or an error object) and the exit status. These helpers do the same, for our plugins
(built into bin/ by `make build`) and for the reference plugins (/usr/lib/cni), so a test can
drive both the same way and compare.
"""

import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("SWIFT_CNI_BIN", REPO / "bin"))
REF_DIR = Path(os.environ.get("SWIFT_CNI_REFERENCE", "/usr/lib/cni"))


@dataclass
class PluginRun:
    """What a runtime sees of one plugin execution."""

    rc: int
    stdout: bytes
    stderr: str
    json: object = field(default=None)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def error_code(self):
        return self.json.get("code") if isinstance(self.json, dict) else None

    def __str__(self) -> str:
        return f"rc={self.rc} stdout={self.stdout[:2000]!r} stderr={self.stderr[:2000]!r}"


def unique(prefix: str, length: int = 12) -> str:
    """A short unique name (interface names are limited to 15 bytes)."""
    return (prefix + uuid.uuid4().hex)[:length]


def run_plugin(plugin, command, config, *, containerid="ctr1", netns="", ifname="eth0", args=None,
               path=None, env=None, bin_dir=None, timeout=60, raw_env=None, wrapper=()) -> PluginRun:
    """Exec `plugin` (a name in bin_dir, or a path) with the CNI environment and `config` on stdin.

    `config` may be a dict (encoded as JSON), str or bytes (sent as is, for bad-input tests).
    `raw_env`, when given, replaces the CNI_* variables entirely (for missing-variable tests).
    `wrapper` prefixes the command line (e.g. `ip netns exec <host>` to run in a test's "host").
    """
    directory = Path(bin_dir) if bin_dir else BIN_DIR
    executable = Path(plugin) if "/" in str(plugin) else directory / plugin
    if isinstance(config, (dict, list)):
        stdin = json.dumps(config).encode()
    elif isinstance(config, str):
        stdin = config.encode()
    else:
        stdin = config or b""
    environment = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if raw_env is not None:
        environment.update(raw_env)
    else:
        environment.update({
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": containerid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": path if path is not None else str(directory),
        })
        if args is not None:
            environment["CNI_ARGS"] = args
    if env:
        environment.update(env)
    proc = subprocess.run([*wrapper, str(executable)], input=stdin, capture_output=True, env=environment,
                          timeout=timeout)
    try:
        parsed = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        parsed = None
    return PluginRun(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"), parsed)


def sh(*argv, check=True, input=None) -> str:
    """Run a command (no shell), return stdout; raise with its stderr on failure."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def ip_json(*argv, netns=None):
    """`ip -j ...` parsed, optionally inside a named netns."""
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    out = sh(*prefix, "-j", *argv)
    return json.loads(out) if out.strip() else []
