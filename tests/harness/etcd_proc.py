"""A real etcd (Debian's etcd-server) on loopback for tests, started and stopped by pid."""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdProcess:
    def __init__(self, workdir: pathlib.Path, extra=()):
        """extra: more etcd flags (bench/bench_fleet.py raises the quota)."""
        self.extra = list(extra)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc = None

    def start(self, timeout: float = 20.0) -> "EtcdProcess":
        if shutil.which("etcd") is None:
            raise AssertionError("etcd missing: run `sh scripts/install-deps` (Debian's etcd-server)")
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", str(self.dir / "data"), "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
             peer, "--initial-cluster", f"t={peer}", *self.extra],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "etcd.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited {self.proc.returncode}: "
                                     f"{(self.dir / 'etcd.log').read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("etcd did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)     # a bench's etcd of a GiB takes a while to close
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def get_prefix(self, prefix: str) -> dict:
        import base64
        import json
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                           "range_end": base64.b64encode(end.encode()).decode()}).encode()
        req = urllib.request.Request(self.url + "/v3/kv/range", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            resp = json.loads(r.read())
        return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
                for kv in resp.get("kvs", [])}
