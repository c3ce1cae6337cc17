"""Fixtures of the reliability suite, and the fault table printed at the end of the run.

Every test records what it did with ``record(fault, expected, observed, ok=check)``;
a false ``ok`` fails the test there and then, a row without one passes when the test
that recorded it passed, and ``pytest_terminal_summary`` prints all rows as one
table. The real-libvirt fixtures (libvirt_hosts, hookd_factory, guest_image,
libvirt_env) are the integration suite's own.
"""

from __future__ import annotations

import subprocess
import textwrap
from typing import Callable, List, Optional

import pytest

from tests.harness.faults import is_mountpoint
from tests.harness.fixtures import (  # noqa: F401  (the integration suite's fixtures)
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
