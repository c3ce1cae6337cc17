"""The platforms suite's fixture ``platform_report`` and its report: after the run, one line
per root (built this run, and how long, or cached), one per pytest run in a root (the root's
Python, pytest's own result line there, how long), and the DESELECTED list with its reasons,
so a deselected test is always shown and never counted as passed."""

from __future__ import annotations

import pytest

from tests.harness.roots import DESELECTED


def _report(config) -> dict:
    if not hasattr(config, "_hookd_platforms"):
        config._hookd_platforms = {"built": {}, "runs": []}
    return config._hookd_platforms


@pytest.fixture
def platform_report(request) -> dict:
    """{"built": codename -> seconds spent building (0.0: cached) or the RootError,
    "runs": [tests.harness.roots.RootRun]}: what the terminal summary prints."""
    return _report(request.config)


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    report = _report(tr.config)
    tr.section("platforms: the suites run inside Debian and Ubuntu roots")
    for codename, built in report["built"].items():
        if isinstance(built, float):
            what = f"built in {built:.0f} s" if built else "cached"
        else:
            what = "could not be built: " + str(built).splitlines()[0]
        tr.write_line(f"{codename:<9} root {what}")
    for run in report["runs"]:
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        tr.write_line(f"{run.codename:<9} {run.label:<12} Python {run.python:<7} {status:<16} "
                      f"{run.summary}  [{run.run_seconds:.0f} s]")
    tr.write_line(f"deselected in the roots ({len(DESELECTED)}, tests.harness.roots.DESELECTED):")
    for codename, node, why in DESELECTED:
        tr.write_line(f"  {codename:<9} {node}  -- {why}")
    if not DESELECTED:
        tr.write_line("  (none)")
