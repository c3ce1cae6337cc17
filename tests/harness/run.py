"""Running hookd's commands the way an operator does (a subprocess of this checkout), and
the checkout's paths. Shared by every suite and helper; no fixtures here (tests/conftest.py).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


DATA = REPO / "tests" / "data"


def hookd_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_hookctl(*args, input=None, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hookd.cli", *map(str, args)], input=input,
                          capture_output=True, timeout=timeout, env=env or hookd_env())


def one_line_error(res, fragment: str) -> None:
    """A refused hookctl call: non-zero exit, nothing on stdout, one `hookctl: error:` line
    naming `fragment`, no traceback."""
    assert res.returncode != 0
    assert res.stdout == b""                          # never partial output
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("hookctl: error: "), err
    assert "Traceback" not in err and fragment in err, err


def json_position(data: bytes) -> dict:
    """Where this Python's json says `data` goes wrong ({"line", "col"}): hookd passes the
    parser's position through, and Python 3.13 moved it for a trailing comma."""
    import json
    try:
        json.loads(data)
    except ValueError as err:
        return {"line": err.lineno, "col": err.colno}
    raise AssertionError(f"{data!r} is valid JSON")
