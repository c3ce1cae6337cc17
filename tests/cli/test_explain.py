"""hookctl explain, rewrite and check-config (hookd/cli/explain.py) as an operator runs
them (subprocesses): the decision as a table or JSON, the rewritten document, and bad
input, files and configuration as one line on stderr with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness.attacks import ATTACKS
from tests.harness.domains import HOST_SERIAL, UUID, domain
from tests.harness.run import hookd_env, one_line_error


def test_explain_table(tmp_path, hookctl):
    f = tmp_path / "d.xml"
    f.write_bytes(domain())
    res = hookctl("explain", "--xml", f, "--config", tmp_path / "none.conf")
    one_line_error(res, "no such file")               # explicit config must exist
    (tmp_path / "c.conf").write_text("")
    res = hookctl("explain", "--xml", f, "--config", tmp_path / "c.conf")
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(None, 1) for line in res.stdout.decode().splitlines())
    assert lines["verdict"] == "rewrite" and lines["serial_policy"] == UUID
    assert lines["serial_current"] == HOST_SERIAL and lines["rule"] == "default"


def test_explain_json_from_stdin(tmp_path, hookctl):
    (tmp_path / "c.conf").write_text("[policy]\nmode = host\n")
    res = hookctl("explain", "--xml", "-", "--json", "--config", tmp_path / "c.conf", input=domain())
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    for key in ("verdict", "serial_current", "serial_policy", "rule", "instance_uuid", "domain"):
        assert key in d
    assert (d["verdict"], d["serial_policy"], d["rule"], d["domain"]) == \
        ("compliant", HOST_SERIAL, "default", "instance-00000001")


def test_rewrite_compliant_is_byte_identical(tmp_path, hookctl):
    (tmp_path / "c.conf").write_text("")
    data = domain(serial=UUID).replace(b"<domain", b"<?xml version='1.0'?>\n<!-- x -->\n<domain", 1)
    res = hookctl("rewrite", "--xml", "-", "--config", tmp_path / "c.conf", input=data)
    assert res.returncode == 0 and res.stdout == data


def test_rewrite_changes_the_serial(tmp_path, hookctl):
    (tmp_path / "c.conf").write_text("")
    res = hookctl("rewrite", "--xml", "-", "--config", tmp_path / "c.conf", input=domain())
    assert res.returncode == 0
    assert f"<entry name=\"serial\">{UUID}</entry>".encode() in res.stdout
    assert HOST_SERIAL.encode() not in res.stdout


BAD_INPUTS = {
    "malformed": (b"<domain><uuid>", "not well-formed"),
    "xxe": (ATTACKS["external entity (file)"].replace(b"SECRET", b"/etc/passwd"), "DOCTYPE"),
    "laughs": (ATTACKS["billion laughs"], "DOCTYPE"),
    "utf8": (b"<domain>\xc3\x28</domain>", "not valid UTF-8"),
    "root": (b"<vm/>", "root element is <vm>"),
    "no-uuid": (b"<domain><name>a</name></domain>", "no <uuid>"),
    "bad-uuid": (b"<domain><uuid>1234</uuid></domain>", "is not a UUID"),
}


@pytest.mark.parametrize("command", ["explain", "rewrite"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_nonzero(tmp_path, hookctl, command, case):
    data, fragment = BAD_INPUTS[case]
    (tmp_path / "c.conf").write_text("")
    f = tmp_path / "in.xml"
    f.write_bytes(data)
    one_line_error(hookctl(command, "--xml", f, "--config", tmp_path / "c.conf"), fragment)


def test_unreadable_file(tmp_path, hookctl):
    (tmp_path / "c.conf").write_text("")
    one_line_error(hookctl("explain", "--xml", tmp_path / "missing.xml", "--config", tmp_path / "c.conf"),
                   "cannot read")
    one_line_error(hookctl("explain", "--xml", tmp_path, "--config", tmp_path / "c.conf"), "cannot read")


def test_unreadable_file_permission(tmp_path, hookctl):
    f = tmp_path / "secret.xml"
    f.write_bytes(domain())
    os.chmod(f, 0)
    (tmp_path / "c.conf").write_text("")
    # root reads anything; drop to nobody so the permission check is real.
    env_cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "c.conf", 0o644)
    res = subprocess.run(env_cmd + [sys.executable, "-m", "hookd.cli", "explain", "--xml", str(f),
                                    "--config", str(tmp_path / "c.conf")],
                         capture_output=True, env=hookd_env(), timeout=60)
    one_line_error(res, "Permission denied")


def test_bad_config_one_line(tmp_path, hookctl):
    (tmp_path / "c.conf").write_text("[policy]\nmode = template\ntemplate = S-{serialno}\n")
    f = tmp_path / "d.xml"
    f.write_bytes(domain())
    one_line_error(hookctl("explain", "--xml", f, "--config", tmp_path / "c.conf"),
                   f"{tmp_path / 'c.conf'}:3: template 'S-{{serialno}}': unknown placeholder {{serialno}}")
    one_line_error(hookctl("check-config", "--config", tmp_path / "c.conf"), ":3:")


def test_check_config_ok(tmp_path, hookctl):
    (tmp_path / "c.conf").write_text(f"[rule:a]\ninstance = {UUID}\nmode = host\n")
    res = hookctl("check-config", "--config", tmp_path / "c.conf")
    assert res.returncode == 0 and b"1 rule" in res.stdout
