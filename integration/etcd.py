"""A private etcd (Debian's etcd-server, v3.4) for the cluster-ipam tests: one member or a
3-member cluster on free loopback ports, data on a temporary directory, stopped by PID after.

Elections are tuned for loopback (heartbeat 50 ms, election 500 ms) so a SIGKILLed leader is
replaced well inside cnictl's 2 s deadline; the defaults (100 ms / 1 s) are for real networks.
"""

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_ports(count):
    """Ports the kernel says are free now (bound and released at once; etcd binds them next)."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def make_certs(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in
    `directory`: {"ca", "server_cert", "server_key", "client_cert", "client_key"}."""
    def path(name):
        return os.path.join(directory, name)

    def openssl(*argv):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=swcni-test-ca",
            "-keyout", path("ca.key"), "-out", path("ca.pem"))
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        with open(path(name + ".ext"), "w") as f:
            f.write(extension + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=swcni-test-{name}",
                "-keyout", path(name + ".key"), "-out", path(name + ".csr"))
        openssl("x509", "-req", "-in", path(name + ".csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", path(name + ".ext"), "-out", path(name + ".pem"))
    return {"ca": path("ca.pem"), "server_cert": path("server.pem"), "server_key": path("server.key"),
            "client_cert": path("client.pem"), "client_key": path("client.key")}


class Member:
    def __init__(self, cluster, index, client_port, peer_port):
        self.cluster = cluster
        self.name = f"m{index}"
        scheme = "https" if cluster.tls else "http"
        self.client_url = f"{scheme}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = os.path.join(cluster.root, self.name)
        self.process = None
        self.log_path = os.path.join(cluster.root, self.name + ".log")

    def argv(self, state):
        return [
            ETCD, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.cluster.initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", self.cluster.token,
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--log-level", "warn", "--logger", "zap",
        ] + ([
            "--cert-file", self.cluster.tls["server_cert"], "--key-file", self.cluster.tls["server_key"],
            "--client-cert-auth", "--trusted-ca-file", self.cluster.tls["ca"],
        ] if self.cluster.tls else [])

    def start(self, state="new"):
        log = open(self.log_path, "ab")
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.process = subprocess.Popen(self.argv(state), stdout=log, stderr=log, env=env, start_new_session=True)
        log.close()

    def kill(self, sig=signal.SIGKILL):
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self):
        self.kill()
        self.start(state="existing")

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def status(self, timeout=0.5):
        """The member's /v3/maintenance/status reply, or None."""
        request = urllib.request.Request(self.client_url + "/v3/maintenance/status", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.cluster.ssl_context()) as reply:
                return json.loads(reply.read())
        except OSError:
            return None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""


class Cluster:
    def __init__(self, size=1, tls=False):
        self.root = tempfile.mkdtemp(prefix="swcni-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.token = os.path.basename(self.root)
        # With tls: clients must present a certificate signed by the test CA (`self.tls`).
        self.tls = make_certs(self.root) if tls else None
        ports = free_ports(2 * size)
        self.members = [Member(self, i, ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def ssl_context(self):
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls["ca"])
        context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return context

    @property
    def endpoints(self):
        return [m.client_url for m in self.members]

    def start(self):
        for member in self.members:
            member.start()
        self.wait_healthy()

    def wait_healthy(self, timeout=20):
        """Every running member answers and one of them is the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [m for m in self.members if m.running]
            statuses = [m.status() for m in running]
            if running and all(statuses) and self._leader_id(statuses) is not None:
                if self._writable():
                    return
            for m in self.members:
                if m.process and m.process.poll() is not None and m.process.returncode not in (None, -9):
                    raise RuntimeError(f"etcd {m.name} exited {m.process.returncode}:\n{m.log()}")
            time.sleep(0.05)
        raise RuntimeError("etcd did not become healthy:\n" + "\n".join(m.log() for m in self.members))

    @staticmethod
    def _leader_id(statuses):
        leaders = {s.get("leader") for s in statuses if s}
        return leaders.pop() if len(leaders) == 1 else None

    def _writable(self):
        body = json.dumps({"key": "X19oZWFsdGhfXw==", "value": "b2s="}).encode()
        for m in self.members:
            if not m.running:
                continue
            try:
                request = urllib.request.Request(m.client_url + "/v3/kv/put", data=body, method="POST")
                with urllib.request.urlopen(request, timeout=1, context=self.ssl_context()) as reply:
                    reply.read()
                return True
            except OSError:
                continue
        return False

    def leader(self):
        """The member that is the leader now (or None)."""
        for m in self.members:
            if not m.running:
                continue
            status = m.status()
            if status and status.get("leader") == status.get("header", {}).get("member_id"):
                return m
        return None

    def stop(self):
        for member in self.members:
            member.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _skip_without_etcd():
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed (make deps installs it)")


@pytest.fixture
def etcd():
    """One etcd member, started for the test and stopped by PID after."""
    _skip_without_etcd()
    cluster = Cluster(1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_tls():
    """One etcd member serving https and requiring client certificates (`cluster.tls`)."""
    _skip_without_etcd()
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (it makes the test certificates)")
    cluster = Cluster(1, tls=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster():
    """A 3-member etcd cluster on loopback, started for the test and stopped by PID after."""
    _skip_without_etcd()
    cluster = Cluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def answer_losing_proxy(upstream, lose):
    """A proxy on loopback to the etcd endpoint `upstream`: it forwards every POST, but for the
    first one `lose(path, body)` is true for it closes the connection instead of answering (the
    request applied, its answer lost, as with a timeout after commit). Yields (url, lost), `lost`
    listing the paths whose answer it dropped."""
    lost = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            forwarded = urllib.request.Request(upstream + self.path, data=body, method="POST")
            with urllib.request.urlopen(forwarded, timeout=2) as reply:
                answer = reply.read()
            if not lost and lose(self.path, body):
                lost.append(self.path)
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", lost
    finally:
        server.shutdown()
        server.server_close()


def is_claim_txn(path, body):
    """The txn that takes a block (it puts), not the read-only txn before it."""
    return path == "/v3/kv/txn" and b"request_put" in body
