"""Fixtures of the reliability suite, and the fault table printed at the end of the run.

Every test records what it did with ``record(fault, expected, observed, ok=check)``;
a false ``ok`` fails the test there and then, a row without one passes when the test
that recorded it passed, and ``pytest_terminal_summary`` prints all rows as one
table. The real-libvirt fixtures (libvirt_hosts, hookd_factory, guest_image,
libvirt_env) are the integration suite's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from typing import Callable, List, Optional

import pytest

from tests.waiting import wait_for  # noqa: F401  (the suite's one bounded wait)
from tests.integration.conftest import (  # noqa: F401  (re-exported fixtures)
    guest_image,
    hookd_factory,
    hookd_stack,
    libvirt_env,
    libvirt_hosts,
)

_ROWS: List[dict] = []
_ROWS_KEY = pytest.StashKey[list]()


@pytest.fixture
def record(request) -> Callable[..., None]:
    """record(fault, expected, observed, ok=None, detail=""): one row of the fault table.

    ok= is the check itself: a false ok records a FAIL row and fails the test right
    there (AssertionError with the row, and `detail` if given, e.g. a log tail), so
    a row cannot print PASS for a check that did not hold even if the test forgets
    to assert it. ok=None rows take the test's outcome. A test that fails outside its
    recorded checks adds a FAIL row of its own.
    """
    rows = request.node.stash.setdefault(_ROWS_KEY, [])

    def add(fault: str, expected: str, observed: str, ok: Optional[bool] = None, detail: str = "") -> None:
        __tracebackhide__ = True
        row = {"test": request.node.name, "fault": fault, "expected": expected,
               "observed": str(observed), "ok": None if ok is None else bool(ok)}
        rows.append(row)
        _ROWS.append(row)
        if row["ok"] is False:
            raise AssertionError(f"{fault}: expected {expected}; observed {observed}"
                                 + (f"\n{detail}" if detail else ""))

    return add


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    rows = item.stash.get(_ROWS_KEY, [])
    if report.when == "call" or report.failed:
        for row in rows:
            if row["ok"] is None:
                row["ok"] = not report.failed
        if report.failed and not any(row["ok"] is False for row in rows):
            reason = ""
            if call.excinfo is not None:
                reason = f": {call.excinfo.typename}: {str(call.excinfo.value).splitlines()[0][:160]}" \
                    if str(call.excinfo.value) else f": {call.excinfo.typename}"
            row = {"test": item.name, "fault": item.name, "expected": "(see the test's docstring)",
                   "observed": f"{report.when} failed outside the recorded checks{reason}", "ok": False}
            rows.append(row)
            item.stash[_ROWS_KEY] = rows
            _ROWS.append(row)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("hookd reliability: faults injected, expected and observed")
    widths = (28, 44, 52, 4)
    head = ("fault", "expected", "observed", "pass")

    def emit(cells):
        wrapped = [textwrap.wrap(c, w) or [""] for c, w in zip(cells, widths)]
        for i in range(max(len(w) for w in wrapped)):
            tr.write_line(" | ".join((w[i] if i < len(w) else "").ljust(width)
                                     for w, width in zip(wrapped, widths)).rstrip())

    emit(head)
    tr.write_line("-+-".join("-" * w for w in widths))
    for row in _ROWS:
        emit((row["fault"], row["expected"], row["observed"],
              {True: "PASS", False: "FAIL", None: "?"}[row["ok"]]))
    bad = sum(1 for r in _ROWS if r["ok"] is not True)
    tr.write_line(f"{len(_ROWS)} faults, {len(_ROWS) - bad} as expected, {bad} not")


# ----------------------------------------------------------------------------- helpers

def restart_hookd(d, timeout: float = 20.0) -> None:
    """Start a HookdProcess again after it died or was stopped (same config, sockets, state)."""
    if d.proc is not None and d.proc.poll() is None:
        raise AssertionError("hookd is still running")
    if d._notify is not None:
        d._notify.close()
        d._notify = None
    d.start(timeout)


def kill_hookd(d, sig=signal.SIGKILL) -> None:
    """SIGKILL hookd by pid (SIGCONT first, so a stopped one dies now) and reap it."""
    d.proc.send_signal(sig)
    if sig == signal.SIGKILL:
        d.proc.wait(10)


def destroy_all_parallel(host, timeout: float = 60.0) -> None:
    """Destroy every running domain of `host` at once (QEMU needs ~1.5 s each to exit)."""
    import libvirt
    conn = host.connect()
    try:
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)

        def destroy(dom):
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        threads = [threading.Thread(target=destroy, args=(d,), daemon=True) for d in doms]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
    finally:
        conn.close()


def status_json(d, timeout: float = 10) -> dict:
    import json
    from tests.conftest import run_hookctl
    res = run_hookctl("status", "--socket", d.socket, "--json", timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def run_as(uid: int, gid: int, argv, **kw) -> subprocess.CompletedProcess:
    """Run argv as uid:gid with no supplementary groups (setpriv)."""
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=kw.pop("timeout", 60),
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "LC_ALL": "C"},
                          **kw)


def run_as_nobody(argv, **kw) -> subprocess.CompletedProcess:
    return run_as(65534, 65534, argv, **kw)


def wait_or_kill(procs, wall_seconds: float) -> None:
    """Wait for every Popen (each started with start_new_session) until one shared deadline;
    SIGKILL the process group of any still running then (a hang of a fuzzing harness)."""
    deadline = time.monotonic() + wall_seconds
    for proc in procs:
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def ask(sock_path, request, timeout: float = 10):
    """One hook call on hookd's hook socket, framed as the compiled shim frames it."""
    from tests.harness.hookcall import ask_hook
    return ask_hook(sock_path, request, timeout)


def prepare_msg(name: str, xml):
    from tests.harness.hookcall import hook_request
    return hook_request(name, xml)


def is_mountpoint(path) -> bool:
    path = os.path.realpath(str(path))
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def mounts():
    """mounts.add(argv_of_mount, target, before_umount=callable): mounts made by the test,
    unmounted at teardown (innermost first) after their before_umount (e.g. stopping the
    daemon whose files live there) ran."""
    made = []

    class Mounts:
        def add(self, argv, target, before_umount=None):
            subprocess.run(["mount", *map(str, argv)], check=True, capture_output=True, timeout=30)
            made.append((str(target), before_umount))
            assert is_mountpoint(target)

        def remount(self, target, options):
            subprocess.run(["mount", "-o", options, str(target)], check=True, capture_output=True, timeout=30)

    yield Mounts()
    errors = []
    for target, before in reversed(made):
        try:
            if before is not None:
                before()
        except Exception as e:
            errors.append(f"before umount {target}: {e}")
        while is_mountpoint(target):   # a bind mount over a bind mount needs one umount each
            r = subprocess.run(["umount", target], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                errors.append(f"umount {target}: {r.stderr.strip()}")
                break
    if errors:
        pytest.fail("; ".join(errors), pytrace=False)
