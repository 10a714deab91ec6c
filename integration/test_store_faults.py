"""host-local's store on an operator's bad day: a full disk (space, inodes), a read-only
remount, the lock file removed under a held lock with parallel ADDs, links planted for every
state file and directory, and configs of 16 and 64 MB (peak RSS measured against the
reference's).

Every store here is a private tmpfs (or a temp directory) mounted under a temp directory,
unmounted and removed even on failure. Nothing touches the network.

Bounded for `make test`; SWCNI_STRESS=1 (`make stress`) runs many more parallel ADDs while the
lock file is removed over and over.
"""

import concurrent.futures
import errno
import ipaddress
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cnitest import BIN_DIR, REF_DIR, run_plugin

STRESS = os.environ.get("SWCNI_STRESS") == "1"
NETNS = "/var/run/netns/store-fault-unused"  # IPAM never enters it; ADD needs CNI_NETNS set
REF = REF_DIR / "host-local"


def conf(data_dir, version="1.0.0", subnet="10.1.2.0/24", **extra):
    return {"cniVersion": version, "name": "mynet", "type": "ipvlan", **extra,
            "ipam": {"type": "host-local", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": subnet}], [{"subnet": "2001:db8:1::/64"}]]}}


def run(command, config, containerid, plugin="host-local", **kw):
    return run_plugin(plugin, command, config, containerid=containerid, netns=NETNS, **kw)


def lease_state(data_dir):
    """The lease directory (names → bytes; links as their target), what a failure must not change."""
    directory = data_dir / "mynet"
    state = {}
    for entry in sorted(directory.iterdir()) if directory.exists() else []:
        state[entry.name] = ("-> " + os.readlink(entry)) if entry.is_symlink() else (
            entry.read_bytes() if entry.is_file() else "<dir>")
    return state


def leases_of(data_dir, containerid):
    return sorted(name for name, content in lease_state(data_dir).items()
                  if isinstance(content, bytes) and content.split(b"\r\n")[0] == containerid.encode()
                  and _is_address(name))


def _is_address(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def index_mentions(data_dir, text):
    index = data_dir / ".swift-cni-index" / "mynet"
    return any(text.encode() in f.read_bytes() for f in index.iterdir() if f.is_file() and not f.is_symlink())


@pytest.fixture
def tmpfs():
    """A factory of tmpfs mounts (size in KiB, inode count), unmounted after the test."""
    mounts = []

    def make(size_kib=512, inodes=256):
        point = Path(tempfile.mkdtemp(prefix="store-fault-"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,nr_inodes={inodes},mode=0755",
                        "swcni-store-fault", str(point)], check=True)
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)
        try:
            point.rmdir()
        except OSError:
            pass


def fill_space(root):
    """Writes files until the filesystem has no page left; returns them (to free the space)."""
    filler = []
    for i in range(100000):
        path = root / f"filler-{i}"
        try:
            with open(path, "wb") as f:
                filler.append(path)
                f.write(b"\0" * (1 << 20))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            # The last pages, a byte at a time into a file of its own each.
            try:
                with open(path, "ab") as f:
                    while True:
                        f.write(b"\0" * 512)
                        f.flush()
            except OSError as e2:
                assert e2.errno == errno.ENOSPC, e2
            break
    return filler


def fill_inodes(root):
    filler = []
    for i in range(1000000):
        path = root / f"inode-{i}"
        try:
            path.touch()
            filler.append(path)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            break
    return filler


def prepared_store(root):
    """Two containers leased, the index stamped."""
    data_dir = root / "networks"
    for containerid in ("first", "second"):
        added = run("ADD", conf(data_dir), containerid)
        assert added.ok, added
    return data_dir


def touch_lease_directory(data_dir):
    # A foreign writer (the reference, an admin) changed the directory: our index needs a rebuild.
    os.utime(data_dir / "mynet")


@pytest.mark.parametrize("stale_index", [False, True], ids=["index-stamped", "index-stale"])
@pytest.mark.parametrize("exhaust", ["space", "inodes"])
def test_a_full_store_fails_add_cleanly_and_still_releases(tmpfs, exhaust, stale_index):
    root = tmpfs(size_kib=1024, inodes=200)
    data_dir = prepared_store(root)
    if stale_index:
        touch_lease_directory(data_dir)
    filler = fill_space(root) if exhaust == "space" else fill_inodes(root)
    before = lease_state(data_dir)

    status = run("STATUS", conf(data_dir, "1.1.0"), "x")
    assert status.json and status.json["code"] == 50, status
    assert "out of " + ("space" if exhaust == "space" else "inodes") in status.json.get("details", ""), status

    added = run("ADD", conf(data_dir), "third")
    assert added.rc == 1 and added.json["code"] == 101, added
    assert "No space left on device" in added.json["msg"], added
    assert lease_state(data_dir) == before, "a failed ADD leaves no lease and no last_reserved_ip change"

    deleted = run("DEL", conf(data_dir), "first")
    assert deleted.ok, f"DEL must not need free space: {deleted}"
    assert leases_of(data_dir, "first") == []

    for path in filler:
        path.unlink()
    assert run("STATUS", conf(data_dir, "1.1.0"), "x").ok
    again = run("ADD", conf(data_dir), "third")
    assert again.ok, again
    # last_reserved_ip was left at "second"'s addresses: the next ones follow them.
    assert [ip["address"] for ip in again.json["ips"]] == ["10.1.2.4/24", "2001:db8:1::4/64"], again
    assert not index_mentions(data_dir, "first\n") and not index_mentions(data_dir, "first ")
    for containerid in ("second", "third"):
        assert run("CHECK", conf(data_dir), containerid).ok
        assert run("DEL", conf(data_dir), containerid).ok
    assert [n for n in lease_state(data_dir) if _is_address(n)] == []


@pytest.mark.parametrize("exhaust", ["space", "inodes"])
def test_every_amount_of_room_left_gives_a_whole_add_or_none(tmpfs, exhaust):
    """With 0, 1, 2, ... pages (or inodes) left, an ADD fails at a different step each time; it
    either succeeds whole or changes nothing, and its DEL always works."""
    root = tmpfs(size_kib=1024, inodes=200)
    data_dir = prepared_store(root)
    outcomes = []
    for left in range(24 if STRESS else 8):
        slack = []
        if exhaust == "space":
            (root / "slack").write_bytes(b"\0" * (4096 * left))
            slack.append(root / "slack")
            filler = fill_space(root)
        else:
            for i in range(left):
                (root / f"slack-{i}").touch()
                slack.append(root / f"slack-{i}")
            filler = fill_inodes(root)
        for path in slack:
            path.unlink()
        before = lease_state(data_dir)
        added = run("ADD", conf(data_dir), f"room-{left}")
        if added.ok:
            assert len(leases_of(data_dir, f"room-{left}")) == 2
        else:
            assert added.json["code"] == 101 and "No space left" in added.json["msg"], added
            assert lease_state(data_dir) == before, f"{left} left: a failed ADD changed the store"
        outcomes.append(added.ok)
        deleted = run("DEL", conf(data_dir), f"room-{left}")
        assert deleted.ok, deleted
        assert leases_of(data_dir, f"room-{left}") == []
        for path in filler:
            path.unlink()
    assert not outcomes[0] and outcomes[-1], f"from failing to succeeding as room grows: {outcomes}"


def test_a_lease_directory_on_its_own_filesystem_works_and_fails_cleanly(tmp_path):
    """<dataDir>/<network> a mount point of its own: no link or rename reaches it from the index
    directory, so its temp files live in it; a full one still fails an ADD without a trace."""
    data_dir = tmp_path / "networks"
    (data_dir / "mynet").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,nr_inodes=64", "swcni-store-fault",
                    str(data_dir / "mynet")], check=True)
    try:
        for containerid in ("first", "second"):
            assert run("ADD", conf(data_dir), containerid).ok
        assert leases_of(data_dir, "second") == ["10.1.2.3", "2001:db8:1::3"]
        assert (data_dir / "mynet" / "last_reserved_ip.0").read_text() == "10.1.2.3"
        assert not [n for n in lease_state(data_dir) if n.startswith("~")], lease_state(data_dir)
        assert run("CHECK", conf(data_dir), "first").ok
        filler = fill_inodes(data_dir / "mynet")
        before = lease_state(data_dir)
        failed = run("ADD", conf(data_dir), "third")
        assert failed.rc == 1 and failed.json["code"] == 101, failed
        assert lease_state(data_dir) == before
        assert run("DEL", conf(data_dir), "first").ok
        for path in filler:
            path.unlink()
        assert run("ADD", conf(data_dir), "third").ok
        assert leases_of(data_dir, "third") == ["10.1.2.4", "2001:db8:1::4"]
        for containerid in ("second", "third"):
            assert run("DEL", conf(data_dir), containerid).ok
        assert [n for n in lease_state(data_dir) if _is_address(n) or n.startswith("~")] == []
    finally:
        subprocess.run(["umount", "-l", str(data_dir / "mynet")], check=False)


def test_a_read_only_store_is_reported_and_fails_add_cleanly(tmpfs):
    root = tmpfs()
    data_dir = prepared_store(root)
    before = lease_state(data_dir)
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    try:
        status = run("STATUS", conf(data_dir, "1.1.0"), "x")
        assert status.json and status.json["code"] == 50, status
        added = run("ADD", conf(data_dir), "third")
        assert added.rc == 1 and added.json["code"] == 101, added
        assert "Read-only file system" in added.json["msg"], added
        deleted = run("DEL", conf(data_dir), "first")
        assert deleted.rc == 1 and deleted.json["code"] == 101, deleted
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    assert lease_state(data_dir) == before
    assert run("DEL", conf(data_dir), "first").ok
    assert leases_of(data_dir, "first") == []


@pytest.mark.parametrize("plugin", ["host-local"])
def test_lock_removed_under_parallel_adds_loses_no_lease(tmp_path, plugin):
    """An admin removes `lock` over and over while ADDs run in parallel (one of them holding it):
    every ADD's lease is released by its DEL, and no address is given twice."""
    data_dir = tmp_path / "networks"
    count = 300 if STRESS else 24
    # A held lock at the start: the test's own, so the ADDs queue behind it.
    (data_dir / "mynet").mkdir(parents=True)
    (data_dir / ".swift-cni-index" / "mynet").mkdir(parents=True, mode=0o700)
    held = os.open(data_dir / "mynet" / "lock", os.O_RDONLY | os.O_CREAT, 0o750)
    import fcntl
    fcntl.flock(held, fcntl.LOCK_EX)
    stop = threading.Event()

    def remover():
        while not stop.is_set():
            try:
                os.unlink(data_dir / "mynet" / "lock")
            except FileNotFoundError:
                pass
            time.sleep(0.003)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {pool.submit(run, "ADD", conf(data_dir, subnet="10.1.0.0/16"), f"c{i}"): f"c{i}" for i in range(count)}
        time.sleep(0.2)
        thread = threading.Thread(target=remover)
        thread.start()
        os.close(held)
        try:
            results = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}
        finally:
            stop.set()
            thread.join()
    given = []
    for containerid, added in results.items():
        assert added.ok, (containerid, added)
        given += [ip["address"] for ip in added.json["ips"]]
        assert len(leases_of(data_dir, containerid)) == 2, containerid
    assert len(given) == len(set(given)) == 2 * count, "an address given twice"
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        deleted = list(pool.map(lambda c: run("DEL", conf(data_dir, subnet="10.1.0.0/16"), c), results))
    assert all(d.ok for d in deleted), [d for d in deleted if not d.ok]
    left = [n for n in lease_state(data_dir) if _is_address(n)]
    assert left == [], f"{len(left)} leases left after every DEL: {left[:5]}"


# --- Links planted in the store ----------------------------------------------------------------

def test_a_dangling_lock_link_is_refused_and_its_target_never_created(tmp_path):
    data_dir = tmp_path / "networks"
    assert run("ADD", conf(data_dir), "first").ok
    lock = data_dir / "mynet" / "lock"
    lock.unlink()
    target = tmp_path / "created-through-the-link"
    lock.symlink_to(target)
    for command in ("ADD", "DEL", "CHECK"):
        result = run(command, conf(data_dir), "x")
        assert result.rc == 1 and result.json["code"] == 101, (command, result)
        assert str(lock) in result.json["msg"], result
    assert not target.exists()
    assert leases_of(data_dir, "first") != []


@pytest.mark.parametrize("linked", [".swift-cni-index/mynet", ".swift-cni-index", "mynet"])
def test_a_directory_link_is_refused_and_nothing_behind_it_touched(tmp_path, linked):
    data_dir = tmp_path / "networks"
    assert run("ADD", conf(data_dir), "first").ok
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("b001", "10.1.2.2", "~bucket.b001", "lock", "keep"):
        (elsewhere / name).write_text("precious")
    (data_dir / linked).rename(tmp_path / "moved-away")
    (data_dir / linked).symlink_to(elsewhere)
    touch_lease_directory(data_dir) if linked != "mynet" else None
    before = {p.name: p.read_text() for p in elsewhere.iterdir()}
    for command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        version = "1.1.0" if command in ("GC", "STATUS") else "1.0.0"
        extra = {"cni.dev/valid-attachments": []} if command == "GC" else {}
        result = run(command, conf(data_dir, version, **extra), "first")
        assert result.rc == 1, (command, result)
        assert result.json["code"] == (50 if command == "STATUS" else 101), (command, result)
        assert str(data_dir / linked) in json.dumps(result.json), (command, result)
    assert {p.name: p.read_text() for p in elsewhere.iterdir()} == before


def test_links_under_our_file_names_are_never_followed_nor_removed(tmp_path):
    data_dir = tmp_path / "networks"
    assert run("ADD", conf(data_dir), "first").ok
    outside = tmp_path / "outside"
    outside.write_text("second\r\neth0")
    mynet = data_dir / "mynet"
    index = data_dir / ".swift-cni-index" / "mynet"
    (mynet / "10.1.2.3").symlink_to(outside)
    (mynet / "last_reserved_ip.0").unlink()
    (mynet / "last_reserved_ip.0").symlink_to(outside)
    for name in [p.name for p in index.iterdir()]:
        (index / name).unlink()
        (index / name).symlink_to(outside)
    (index / "~bucket.b000").symlink_to(tmp_path / "never-created")
    os.mkfifo(mynet / "10.1.2.4")
    added = run("ADD", conf(data_dir), "second")
    assert added.ok, added
    assert added.json["ips"][0]["address"] == "10.1.2.5/24", "a link or a FIFO is not a free address"
    assert run("DEL", conf(data_dir), "second").ok
    gc = run("GC", conf(data_dir, "1.1.0", **{"cni.dev/valid-attachments": []}), "x")
    assert gc.ok, gc
    assert outside.read_bytes() == b"second\r\neth0"
    assert not (tmp_path / "never-created").exists()
    assert (mynet / "10.1.2.3").is_symlink() and (mynet / "10.1.2.4").exists()
    assert leases_of(data_dir, "first") == [], "GC released first's leases"


# --- Large configs: peak RSS ------------------------------------------------------------------

def peak_rss_kib(plugin, command, stdin, data_dir, containerid):
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                   "CNI_CONTAINERID": containerid, "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0",
                   "CNI_PATH": str(Path(plugin).parent)}
    # Through GNU time: a child forked from this (large) Python process would count Python's
    # pages in its own peak until exec.
    with tempfile.TemporaryFile() as source, tempfile.NamedTemporaryFile() as figure:
        source.write(stdin)
        source.seek(0)
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", figure.name, str(plugin)], stdin=source,
                              capture_output=True, env=environment)
        return int(Path(figure.name).read_text().split()[-1]), proc.returncode, proc.stdout


def big_config(data_dir, size):
    """A config of `size` bytes: numbers in a key host-local ignores."""
    head = json.dumps(conf(data_dir))[:-1] + ', "junk": ['
    count = (size - len(head) - 2) // 2
    return (head + ",".join(["1"] * count) + "]}").encode()


SIZES = {"16MB": 16_000_000, "64MB": 64_000_000}
FIGURES = {}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("plugin", ["swift-cni", "reference"])
def test_peak_rss_of_add_and_del_on_large_configs(tmp_path, size, plugin):
    if not Path("/usr/bin/time").exists():
        pytest.skip("GNU time (package time) missing")
    if plugin == "reference" and not REF.exists():
        pytest.skip(f"{REF} missing")
    executable = BIN_DIR / "host-local" if plugin == "swift-cni" else REF
    data_dir = tmp_path / "networks"
    stdin = big_config(data_dir, SIZES[size])
    figures = {}
    for command in ("ADD", "DEL"):
        rss, code, output = peak_rss_kib(executable, command, stdin, data_dir, "big")
        figures[command] = rss
        if plugin == "swift-cni" and SIZES[size] > 16 * 1024 * 1024:
            # Past the documented limit: refused before it is parsed, and before most of it is read.
            assert code == 1 and json.loads(output)["code"] == 6, output[:300]
        elif command == "ADD":
            assert code == 0, output[:300]
        else:
            assert code == 0, output[:300]
    FIGURES[(plugin, size)] = figures
    print(f"\npeak RSS {plugin} {size}: ADD {figures['ADD'] / 1024:.0f} MiB, DEL {figures['DEL'] / 1024:.0f} MiB")
    if plugin == "swift-cni":
        # Proportional to the input, not to its number of values (it was 1.6 GiB for 64 MB).
        assert max(figures.values()) < 3 * SIZES[size] / 1024 + 40 * 1024, figures
