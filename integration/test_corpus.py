"""The bad-input corpus (integration/corpus/*.json): every case must fail cleanly and change nothing.

One case = stdin + environment + expected outcome. For an expected error the plugin must exit
non-zero and print one JSON error object with `cniVersion`, the expected code (never the
catch-all 999), and a message (msg + details) containing every `contains` string, which name the
key and the value at fault. And the host must not change: each case runs in a fresh "host"
namespace (the plugin is exec'd inside it with `ip netns exec`) and a fresh container namespace,
snapshotted before and after (links, addresses, routes, rules, nftables, iptables, sysctls, and
every file under the case's temporary directory, which holds the IPAM data dir).

Case keys (see the files): `id`; `command` (default: the file's base); `config` (a whole config)
or `patch` (merged into the base config; `{"$delete": true}` removes a key) or `stdin` (raw text)
or `generator` (a named way to build huge or malformed stdin, below); `env` (overrides; null
removes a variable); `setup` (actions before the snapshot); `expect`: `code` (int or list),
`contains` (list), `outcome` (`error` by default; `success` for DEL, which is best-effort; `either`
for inputs where refusing and accepting are both defensible), `leftovers` (after a success: `all`
must be gone, or only `leases-and-rules`); `xfail` (a known defect, with its
description: the case then must fail until the defect is fixed); `note`.
`${VAR}` in any string is replaced with the case's resources (see `Sandbox.variables`).

common.json holds protocol-level cases run against every plugin, with that plugin's base; a
plugin's file may amend a common case's `expect` under `common_expect` (by case id), where the
plugin's own nature makes another answer right.
"""

import copy
import json
import os
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cnitest import BIN_DIR, sh
from snapshot import assert_unchanged, differences, leftovers, snapshot

CORPUS = Path(__file__).resolve().parent / "corpus"
PLUGINS = ("bridge", "ptp", "host-local", "static", "loopback", "portmap", "firewall", "tuning", "bandwidth",
           "cluster-ipam")
CASE_TIMEOUT = 30
# Cases run concurrently, each in its own namespaces (SWCNI_CORPUS_JOBS to change).
PARALLEL_CASES = int(os.environ.get("SWCNI_CORPUS_JOBS", "4"))


def load_cases():
    bases = {}
    overrides = {}
    params = []
    for plugin in PLUGINS:
        doc = json.loads((CORPUS / f"{plugin}.json").read_text())
        bases[plugin] = doc["base"]
        overrides[plugin] = doc.get("common_expect", {})
        for case in doc["cases"]:
            params.append((plugin, case))
    common = json.loads((CORPUS / "common.json").read_text())
    for plugin in PLUGINS:
        for case in common["cases"]:
            override = overrides[plugin].get(case["id"])
            expect = dict(case["expect"], **override) if override else case["expect"]
            params.append((plugin, dict(case, id="common:" + case["id"], expect=expect)))
    ids = [f"{plugin}:{case['id']}" for plugin, case in params]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {duplicates}"
    marked = []
    for (plugin, case), case_id in zip(params, ids):
        marks = []
        if case.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=case["xfail"]))
        marked.append(pytest.param(plugin, case, bases[plugin], id=case_id, marks=marks))
    return marked


# ---------------------------------------------------------------------------------------------
# Building stdin


def merge(base, patch):
    """JSON merge: objects merge recursively, `{"$delete": true}` removes, anything else replaces."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if value == {"$delete": True}:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def substitute(value, variables):
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("${" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {substitute(k, variables): substitute(v, variables) for k, v in value.items()}
    return value


def generate(name, config):
    """Named stdin builders for inputs too big or too broken to write in a JSON file."""
    encoded = json.dumps(config).encode()
    depth = 100_000
    if name == "truncated":
        return encoded[: len(encoded) * 2 // 3]
    if name == "invalid-utf8":
        return encoded.replace(b'"name": "', b'"name": "\xff\xfe', 1)
    if name == "nul-byte":
        return encoded[:10] + b"\x00" + encoded[10:]
    if name == "trailing-garbage":
        return encoded + b" trailing"
    if name == "two-objects":
        return encoded + encoded
    if name == "garbage-10mb":
        return (b"\x7b\x22garbage" * (10 * 1024 * 1024 // 9))[: 10 * 1024 * 1024]
    if name == "nest-100k":
        return b"[" * depth + b"]" * depth
    if name == "nest-100k-in-args":
        return encoded[:-1] + b', "args": ' + b"[" * depth + b"]" * depth + b"}"
    if name == "pad-10mb":
        return encoded[:-1] + b', "padding": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    if name == "pad-past-16mib":
        # Valid JSON one byte longer than the documented limit (16 MiB).
        head = encoded[:-1] + b', "padding": "'
        return head + b"x" * (16 * 1024 * 1024 + 1 - len(head) - 2) + b'"}'
    raise ValueError(f"unknown generator {name}")


# ---------------------------------------------------------------------------------------------
# One case's world: namespaces, files, names


class Sandbox:
    """A host namespace, a container namespace and a temporary directory, all removed at the end."""

    def __init__(self):
        tag = uuid.uuid4().hex[:8]
        self.host = f"swcni-corpus-h-{os.getpid()}-{tag}"
        self.container = f"swcni-corpus-c-{os.getpid()}-{tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="swcni-corpus-"))
        self.data_dir = self.tmp / "data"
        self.empty_dir = self.tmp / "empty-bin"
        self.empty_dir.mkdir()
        self.regular_file = self.tmp / "regular-file"
        self.regular_file.write_text("not a namespace\n")
        self.variables = {
            "HOSTNS": self.host,
            "CONTAINER_NETNS": f"/run/netns/{self.container}",
            "DATADIR": str(self.data_dir),
            "TMP": str(self.tmp),
            "REGULAR_FILE": str(self.regular_file),
            "MISSING": str(self.tmp / "no-such-netns"),
            "BIN": str(BIN_DIR),
            "EMPTY_DIR": str(self.empty_dir),
            "NEWBRIDGE": "cbr" + tag,
            "LINK": "nbr" + tag,
        }
        for ns in (self.host, self.container):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def close(self):
        for ns in (self.host, self.container):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.tmp)], capture_output=True)

    def snapshot(self):
        namespaces = [self.host] + ([self.container] if Path(f"/run/netns/{self.container}").exists() else [])
        return snapshot(namespaces=namespaces, directories=[self.tmp])

    def settled_snapshot(self, timeout=3.0):
        """A snapshot once the kernel's own follow-up work of a setup has finished: after a setup
        ADD, IPv6 link-local addresses and their DAD appear asynchronously, and a snapshot taken
        in between would blame the case's command for them. Two equal snapshots in a row (or
        the timeout) count as settled."""
        deadline = time.monotonic() + timeout
        previous = self.snapshot()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            current = self.snapshot()
            if current == previous:
                return current
            previous = current
        return previous

    def run(self, plugin, command, env, stdin):
        """Exec the plugin inside the host namespace, as a runtime on that host would."""
        environment = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        environment.update({k: v for k, v in env.items() if v is not None})
        environment["CNI_COMMAND"] = env.get("CNI_COMMAND", command) if "CNI_COMMAND" in env else command
        started = time.monotonic()
        proc = subprocess.run(["ip", "netns", "exec", self.host, str(BIN_DIR / plugin)], input=stdin,
                              capture_output=True, env=environment, timeout=CASE_TIMEOUT)
        return proc, time.monotonic() - started


def case_environment(base, case, variables):
    env = dict(base["env"])
    env.update(case.get("env", {}))
    return substitute(env, variables)


def case_stdin(base, case, variables):
    if "stdin" in case:
        return case["stdin"].encode()
    config = case.get("config", merge(base["config"], case.get("patch", {})))
    config = substitute(config, variables)
    if "generator" in case:
        return generate(case["generator"], config)
    return json.dumps(config).encode()


def do_setup(sandbox, plugin, base, actions):
    for action in actions:
        if action == "add" or action.startswith("add-as:"):
            env = substitute(dict(base["env"]), sandbox.variables)
            if action.startswith("add-as:"):
                _, container_id, args = action.split(":", 2)
                env.update(CNI_CONTAINERID=container_id, CNI_ARGS=args)
            stdin = json.dumps(substitute(base["config"], sandbox.variables)).encode()
            proc, _ = sandbox.run(plugin, "ADD", env, stdin)
            assert proc.returncode == 0, f"setup ADD failed: {proc.stdout!r} {proc.stderr!r}"
        elif action == "nonbridge-link":
            link = sandbox.variables["LINK"]
            sh("ip", "-n", sandbox.host, "link", "add", link, "type", "veth", "peer", "name", link + "p")
        elif action == "container-eth0":
            sh("ip", "-n", sandbox.container, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        elif action == "delete-container-netns":
            sh("ip", "netns", "del", sandbox.container)
        elif action == "lo-no-addresses":
            sh("ip", "-n", sandbox.container, "addr", "flush", "dev", "lo")
            sh("ip", "-n", sandbox.container, "link", "set", "lo", "down")
        else:
            raise ValueError(f"unknown setup action {action}")


def check_error_reply(case_id, proc, expect, variables):
    assert proc.returncode > 0, f"{case_id}: expected a failure (rc>0), got rc={proc.returncode}: {proc.stdout[:500]!r}"
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"{case_id}: stdout is not JSON: {proc.stdout[:500]!r} stderr={proc.stderr[:500]!r}")
    assert isinstance(reply, dict), f"{case_id}: reply is not an object: {reply!r}"
    assert isinstance(reply.get("cniVersion"), str) and reply["cniVersion"], f"{case_id}: no cniVersion in {reply}"
    code = reply.get("code")
    assert isinstance(code, int) and code != 999, f"{case_id}: code {code!r} in {reply}"
    assert isinstance(reply.get("msg"), str) and reply["msg"], f"{case_id}: no msg in {reply}"
    wanted = expect.get("code")
    if wanted is not None:
        allowed = wanted if isinstance(wanted, list) else [wanted]
        assert code in allowed, f"{case_id}: code {code}, expected {allowed}: {reply}"
    text = (reply.get("msg", "") + " " + str(reply.get("details", ""))).lower()
    for needle in substitute(expect.get("contains", []), variables):
        assert needle.lower() in text, f"{case_id}: {needle!r} not named in the error: {reply}"


def check_no_leftovers(sandbox, plugin, base, env, scope="all"):
    """After a successful DEL (or ADD+DEL), nothing of the attachment may remain. With scope
    `leases-and-rules` (DEL without CNI_NETNS) the links may stay: they go with the namespace."""
    config = substitute(base["config"], sandbox.variables)
    network = config.get("name")
    data_dir = (config.get("ipam") or {}).get("dataDir")

    def find():
        found = leftovers(sandbox.host, sandbox.container, ifname=env.get("CNI_IFNAME") or "eth0",
                          container_id=env.get("CNI_CONTAINERID"), data_dir=data_dir, network=network)
        if plugin == "loopback" or scope == "leases-and-rules":
            found = [f for f in found if "container interface" not in f and "host veth" not in f]
        return found

    found = find()
    # A host veth whose peer was in a deleted namespace goes with the kernel's asynchronous
    # namespace cleanup, which no plugin can hurry: only that may take a moment.
    deadline = time.monotonic() + 10
    while found and all("host veth" in f for f in found) and time.monotonic() < deadline:
        time.sleep(0.05)
        found = find()
    assert not found, f"left behind: {found}"


def execute_case(plugin, case, base):
    """Runs one case in its own sandbox and checks everything; raises AssertionError on a miss."""
    sandbox = Sandbox()
    try:
        variables = sandbox.variables
        command = case.get("command", base["command"])
        env = case_environment(base, case, variables)
        stdin = case_stdin(base, case, variables)
        do_setup(sandbox, plugin, base, case.get("setup", []))
        expect = case["expect"]
        outcome = expect.get("outcome", "error")
        before = sandbox.settled_snapshot() if case.get("setup") else sandbox.snapshot()
        proc, elapsed = sandbox.run(plugin, command, env, stdin)
        assert proc.returncode >= 0, f"{case['id']}: killed by signal {-proc.returncode}: {proc.stderr[-2000:]!r}"
        assert elapsed < CASE_TIMEOUT / 2, f"{case['id']}: took {elapsed:.1f}s"
        if outcome == "error" or (outcome == "either" and proc.returncode != 0):
            check_error_reply(case["id"], proc, expect, variables)
            after = sandbox.snapshot()
            if expect.get("may_create_under"):
                # Only new entries under that directory are forgiven (an IPAM store's directories
                # and lock, made before a store error a bad-input corpus cannot avoid).
                root = substitute(expect["may_create_under"], variables)
                changes = [c for c in differences(before, after) if not (c.startswith(root) and ": absent -> " in c)]
                assert not changes, f"host changed by {plugin} {command} {case['id']}:\n  " + "\n  ".join(changes)
            else:
                assert_unchanged(before, after, context=f"{plugin} {command} {case['id']}")
            return
        assert proc.returncode == 0, f"{case['id']}: expected success, got {proc.stdout[:1000]!r} {proc.stderr[:500]!r}"
        if command == "ADD":
            env_del = dict(env, CNI_COMMAND="DEL")
            proc_del, _ = sandbox.run(plugin, "DEL", env_del, stdin)
            assert proc_del.returncode == 0, f"DEL after accepted ADD failed: {proc_del.stdout[:1000]!r}"
        if command in ("ADD", "DEL"):
            check_no_leftovers(sandbox, plugin, base, env, expect.get("leftovers", "all"))
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def corpus_outcomes(request):
    """Every selected case, run up front on a few threads (each case has its own namespaces, so
    they are independent); each test then reports its own case's outcome. Halves the wall time."""
    selected = [item for item in request.session.items
                if getattr(item, "originalname", None) == "test_corpus_case" and hasattr(item, "callspec")]

    def attempt(item):
        params = item.callspec.params
        try:
            execute_case(params["plugin"], params["case"], params["base"])
            return item.callspec.id, None
        except Exception as error:  # reported by the case's own test
            return item.callspec.id, error

    with ThreadPoolExecutor(PARALLEL_CASES) as pool:
        return dict(pool.map(attempt, selected))


@pytest.mark.parametrize("plugin,case,base", load_cases())
def test_corpus_case(plugin, case, base, corpus_outcomes, request):
    case_id = request.node.callspec.id
    if case_id not in corpus_outcomes:  # not collected up front (e.g. run by node id): run it now
        execute_case(plugin, case, base)
        return
    error = corpus_outcomes[case_id]
    if error is not None:
        raise error


def _show(selector):
    """`python3 integration/test_corpus.py bridge:mtu-negative`: runs one case and prints what the
    plugin replied and what changed on the host (for whoever fixes a failing case)."""
    for param in load_cases():
        plugin, case, base = param.values
        if param.id != selector:
            continue
        sandbox = Sandbox()
        try:
            command = case.get("command", base["command"])
            env = case_environment(base, case, sandbox.variables)
            stdin = case_stdin(base, case, sandbox.variables)
            do_setup(sandbox, plugin, base, case.get("setup", []))
            before = sandbox.settled_snapshot() if case.get("setup") else sandbox.snapshot()
            proc, elapsed = sandbox.run(plugin, command, env, stdin)
            print(f"{plugin} {command} rc={proc.returncode} in {elapsed:.2f}s\nstdin: {stdin[:300]!r}")
            print(f"stdout: {proc.stdout[:2000].decode(errors='replace')}\nstderr: {proc.stderr[:2000]!r}")
            from snapshot import differences
            print("host changes:", *(differences(before, sandbox.snapshot()) or ["none"]), sep="\n  ")
        finally:
            sandbox.close()
        return
    raise SystemExit(f"no case {selector}")


if __name__ == "__main__":
    import sys

    _show(sys.argv[1])
