"""firewall's firewalld backend against a fake firewalld on a private bus.

Each test starts its own dbus-daemon (a unix socket in a temp dir, a policy allowing us) and a
fake org.fedoraproject.FirewallD1 (python3-dbus, GLib main loop, run by the system Python) that
keeps one runtime zone table and logs the calls; bin/firewall reaches it through
DBUS_SYSTEM_BUS_ADDRESS. No kernel state is touched; both processes are stopped by PID after.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from cnitest import BIN_DIR, unique

PYTHON = "/usr/bin/python3"
RECORDS = "/run/cni/firewall"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={socket}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_sender="*"/></policy></busconfig>
"""

# firewalld's zone interface as far as the plugin uses it, with firewalld's error codes.
FAKE = """
import sys, dbus, dbus.service, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(sys.argv[1])
name = dbus.service.BusName("org.fedoraproject.FirewallD1", bus)
ZONES = {"trusted", "internal"}
class Fail(dbus.DBusException):
    _dbus_error_name = "org.fedoraproject.FirewallD1.Exception"
class Zone(dbus.service.Object):
    def __init__(self):
        super().__init__(bus, "/org/fedoraproject/FirewallD1")
        self.sources = {}
    def log(self, *words):
        print(*words, flush=True)
    def zone(self, zone):
        if zone not in ZONES:
            raise Fail("INVALID_ZONE: " + zone)
    @dbus.service.method("org.fedoraproject.FirewallD1.zone", in_signature="ss", out_signature="s")
    def addSource(self, zone, source):
        self.log("addSource", zone, source)
        self.zone(zone)
        if self.sources.get(source) == zone:
            raise Fail("ZONE_ALREADY_SET: " + source)
        if source in self.sources:
            raise Fail("ZONE_CONFLICT: " + source)
        self.sources[source] = zone
        return zone
    @dbus.service.method("org.fedoraproject.FirewallD1.zone", in_signature="ss", out_signature="s")
    def removeSource(self, zone, source):
        self.log("removeSource", zone, source)
        self.zone(zone)
        if source not in self.sources:
            raise Fail("UNKNOWN_SOURCE: " + source)
        del self.sources[source]
        return zone
    @dbus.service.method("org.fedoraproject.FirewallD1.zone", in_signature="ss", out_signature="b")
    def querySource(self, zone, source):
        self.log("querySource", zone, source)
        return self.sources.get(source) == zone
Zone()
print("ready", flush=True)
GLib.MainLoop().run()
"""


def have_fake():
    if not shutil.which("dbus-daemon") or not os.path.exists(PYTHON):
        return False
    return subprocess.run([PYTHON, "-c", "import dbus, gi"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not have_fake(), reason="needs dbus-daemon, python3-dbus and python3-gi")


class Bus:
    def __init__(self, tmp_path):
        self.socket = str(tmp_path / "bus")
        self.address = f"unix:path={self.socket}"
        (tmp_path / "bus.conf").write_text(BUS_CONFIG.format(socket=self.socket))
        (tmp_path / "fake.py").write_text(FAKE)
        self.log = tmp_path / "fake.log"
        self.daemon = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={tmp_path}/bus.conf"])
        self.fake = None
        self.tmp_path = tmp_path
        self.wait_for(lambda: os.path.exists(self.socket), "the bus socket")

    def start_fake(self):
        self.fake = subprocess.Popen([PYTHON, str(self.tmp_path / "fake.py"), self.address], stdout=open(self.log, "w"))
        self.wait_for(lambda: "ready" in self.log.read_text(), "the fake firewalld")

    def calls(self):
        return [line.split() for line in self.log.read_text().splitlines() if line != "ready"]

    @staticmethod
    def wait_for(condition, what):
        for _ in range(100):
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} did not come up")

    def stop(self):
        for process in (self.fake, self.daemon):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
                process.wait(timeout=10)


@pytest.fixture
def bus(tmp_path):
    bus = Bus(tmp_path)
    network = unique("fwd")
    bus.network = network
    try:
        yield bus
    finally:
        bus.stop()
        shutil.rmtree(f"{RECORDS}/{network}", ignore_errors=True)


def firewall(bus, command, containerid="c1", prev=True, **keys):
    config = {"cniVersion": "1.0.0", "name": bus.network, "type": "firewall", **keys}
    if prev:
        config["prevResult"] = {
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.79.0.2/24"}, {"address": "2001:db8:79::2/64"}],
        }
    environment = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": containerid,
        "CNI_NETNS": "/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(BIN_DIR),
        "DBUS_SYSTEM_BUS_ADDRESS": bus.address,
    }
    if command in ("GC", "STATUS"):
        config["cniVersion"] = "1.1.0"  # GC and STATUS are spec 1.1
    if command == "GC":
        config["cni.dev/valid-attachments"] = []
    if command in ("GC", "STATUS"):
        for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
            del environment[key]
    run = subprocess.run(
        [str(BIN_DIR / "firewall")], input=json.dumps(config).encode(), env=environment, capture_output=True, timeout=60
    )
    output = json.loads(run.stdout) if run.stdout.strip() else None
    return run.returncode, output


SOURCES = ["10.79.0.2/32", "2001:db8:79::2/128"]


def test_add_check_del_and_del_without_prev_result(bus):
    bus.start_fake()
    status, out = firewall(bus, "ADD")
    assert status == 0, out
    assert bus.calls() == [["addSource", "trusted", s] for s in SOURCES]
    assert firewall(bus, "ADD")[0] == 0, "a repeated ADD (ZONE_ALREADY_SET) succeeds"
    assert firewall(bus, "CHECK")[0] == 0
    status, out = firewall(bus, "DEL", prev=False)
    assert status == 0, out
    assert [c for c in bus.calls() if c[0] == "removeSource"] == [["removeSource", "trusted", s] for s in SOURCES]
    status, out = firewall(bus, "CHECK")
    assert status == 1 and out["code"] == 105 and "10.79.0.2/32" in out["msg"]
    assert firewall(bus, "DEL")[0] == 0, "DEL again: UNKNOWN_SOURCE is no error"


def test_gc_removes_sources_of_attachments_not_valid(bus):
    bus.start_fake()
    assert firewall(bus, "ADD", containerid="gone", firewalldZone="internal")[0] == 0
    status, out = firewall(bus, "GC", prev=False, firewalldZone="internal")
    assert status == 0, out
    assert [c for c in bus.calls() if c[0] == "removeSource"] == [["removeSource", "internal", s] for s in SOURCES]
    assert not os.path.exists(f"{RECORDS}/{bus.network}")


def test_firewalld_errors_say_what_to_fix(bus):
    bus.start_fake()
    status, out = firewall(bus, "ADD", firewalldZone="nosuchzone")
    assert status == 1 and out["code"] == 104
    assert out["msg"] == "failed to add the address 10.79.0.2/32 to nosuchzone zone"
    assert "INVALID_ZONE" in out["details"] and "firewalldZone" in out["details"]
    status, out = firewall(bus, "ADD", firewalldZone="bad/zone")
    assert status == 1 and out["code"] == 7 and out["msg"] == 'invalid firewalldZone "bad/zone"'


def test_a_hung_firewalld_fails_within_the_timeout(bus):
    bus.start_fake()
    os.kill(bus.fake.pid, signal.SIGSTOP)
    status, out = firewall(bus, "ADD", backend="firewalld")
    assert status == 1 and out["code"] == 104
    assert "no reply to org.fedoraproject.FirewallD1.zone.addSource" in out["details"]


def test_without_firewalld_iptables_is_chosen_or_a_configured_firewalld_refused(bus):
    status, out = firewall(bus, "ADD", backend="firewalld")
    assert status == 1 and out["code"] == 50
    assert out["msg"] == "firewalld backend requested but firewalld is not running"
    status, out = firewall(bus, "STATUS", prev=False, backend="firewalld")
    assert status == 1 and out["code"] == 50
    # No firewalld, no backend key: the iptables backend, which STATUS checks (as before).
    status, out = firewall(bus, "STATUS", prev=False)
    assert status == 0 or out["details"] == "iptables cannot list its tables here"
