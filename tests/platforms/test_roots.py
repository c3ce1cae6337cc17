"""issue #17, tested against the real thing: the unit suite inside Debian 11 (bullseye,
Python 3.9), Ubuntu 22.04 (jammy, 3.10), Ubuntu 24.04 (noble, 3.12) and Debian 13 (trixie,
3.13) roots, and the libvirt integration tests with noble's libvirt 10.0 / QEMU 8.2 and
trixie's libvirt 11.3 / QEMU 10.0 in those roots (tests.harness.roots builds the roots once
per machine and runs pytest there with the root's own python3)."""

from __future__ import annotations

import pytest

from tests.harness.roots import INTEGRATION_TESTS, ROOTS, UNIT_ARGS, RootError, build_all, run_pytest


@pytest.fixture
def roots_built(platform_report) -> dict:
    """Every root built before a test runs in one (all at once, the first time on a machine)."""
    built = platform_report["built"]
    if not built:
        built.update(build_all(list(ROOTS.values())))
    return built


def _run(roots_built, platform_report, codename: str, args: tuple, label: str) -> None:
    if isinstance(roots_built[codename], RootError):
        pytest.fail(f"the {codename} root could not be built: {roots_built[codename]}", pytrace=False)
    run = run_pytest(ROOTS[codename], args, label=label)
    platform_report["runs"].append(run)
    if run.returncode != 0:  # pytest's exit status in the root must be 0
        pytest.fail(f"pytest in the {codename} root (Python {run.python}) exited {run.returncode}: "
                    f"{run.summary}\n--- tail of its output ---\n{run.tail()}", pytrace=False)
    if "skipped" in run.summary:
        # A skip would pass here unseen; what cannot run in a root is deselected, by name, in
        # tests.harness.roots.DESELECTED.
        pytest.fail(f"pytest in the {codename} root skipped tests: {run.summary}\n{run.tail()}", pytrace=False)


@pytest.mark.parametrize("codename", sorted(ROOTS))
def test_unit_suite_passes_in_root(roots_built, platform_report, codename):
    _run(roots_built, platform_report, codename, UNIT_ARGS, "unit")


@pytest.mark.parametrize("codename", sorted(c for c, r in ROOTS.items() if r.libvirt))
def test_libvirt_integration_tests_pass_in_root(roots_built, platform_report, codename):
    _run(roots_built, platform_report, codename, INTEGRATION_TESTS, "integration")
