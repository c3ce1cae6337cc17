"""Prometheus' tools for the tests of hookd's metrics and alert rules: promtool, and
reading a metrics textfile with prometheus_client's parser (the reference one).

Installing Debian's `prometheus` package would start a Prometheus server on this
machine; only its /usr/bin/promtool is needed. So `apt-get download prometheus` fetches
the .deb into $HOOKD_TEST_CACHE/promtool (default /var/cache/hookd-tests/promtool) and
`dpkg-deb -x` unpacks it there, once per machine, under a file lock (concurrent test
runs wait, then find it unpacked); node_exporter (prometheus-node-exporter) likewise.
Nothing is installed and nothing is started as a service.

samples()/sample() read hookd's textfile as Prometheus would.

promtool() fails the test (never skips: a skip would count as a pass) when it cannot be
had, with apt-get's or dpkg-deb's message.
"""

from __future__ import annotations

import fcntl
import pathlib
import shutil
import subprocess
import tempfile
from typing import Dict, FrozenSet, Tuple

import pytest

from tests.harness.libvirt_host import cache_root


def promtool() -> pathlib.Path:
    """The path of a promtool that runs (unpacked from Debian's prometheus .deb)."""
    return debian_binary("prometheus", "usr/bin/promtool")


def node_exporter() -> pathlib.Path:
    """node_exporter from Debian's prometheus-node-exporter .deb, unpacked the same way
    (installing the package would start it as a service)."""
    return debian_binary("prometheus-node-exporter", "usr/bin/prometheus-node-exporter")


def debian_binary(package: str, member: str) -> pathlib.Path:
    """One file of a Debian package, unpacked once per machine into $HOOKD_TEST_CACHE/<package>."""
    on_path = shutil.which(pathlib.Path(member).name)
    if on_path:
        return pathlib.Path(on_path)
    root = cache_root() / ("promtool" if package == "prometheus" else package)
    root.mkdir(parents=True, exist_ok=True)
    tool = root / member
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # one fetcher at a time; the others find it unpacked
        if not tool.exists():
            _unpack(root, package, member)
    return tool


def _unpack(root: pathlib.Path, package: str, member: str) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        r = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True,
                           timeout=600)
        debs = sorted(pathlib.Path(tmp).glob(f"{package}_*.deb"))
        if r.returncode != 0 or not debs:
            pytest.fail(f"cannot fetch {member}: apt-get download {package}: {r.stderr.strip() or r.stdout}",
                        pytrace=False)
        unpacked = pathlib.Path(tmp) / "x"
        r = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            pytest.fail(f"cannot unpack {debs[0].name}: {r.stderr.strip()}", pytrace=False)
        target = root / member
        target.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place last: a binary that exists is a whole one.
        shutil.move(str(unpacked / member), str(target) + ".new")
        pathlib.Path(str(target) + ".new").rename(target)


def run(*args: str, stdin: str = None, cwd=None) -> subprocess.CompletedProcess:
    """promtool ARGS, its output as text."""
    return subprocess.run([str(promtool()), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def samples(path) -> Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]:
    """(sample name, labels) -> value for every sample in a textfile (parsed by prometheus_client)."""
    from prometheus_client.parser import text_string_to_metric_families
    text = pathlib.Path(path).read_text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(snapshot: dict, name: str, **labels) -> float:
    """One sample's value in a samples() snapshot; 0 when absent (a counter not yet counted)."""
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)
