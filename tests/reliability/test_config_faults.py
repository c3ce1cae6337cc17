"""Configuration going wrong under a running hookd (reloads by inotify, as an operator's edit).

One real daemon (no libvirt needed) whose config directory is edited while it runs;
each fault is checked in the log (file:line: reason), in `hookctl status` and in the
decisions hookd keeps making on its hook socket (on_mismatch = deny, so the policy in
force shows in the answer: `host` allows a host serial, `unique` denies it).
"""

from __future__ import annotations

import uuid as uuidlib

from tests.harness.run import run_hookctl
from tests.harness.domains import domain
from tests.harness.faults import ask, prepare_msg, status_json
from tests.harness.waiting import wait_for

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


def verdict(d) -> str:
    uid = str(uuidlib.uuid4())
    return ask(d.socket, prepare_msg("instance-x", domain(uuid=uid, serial=HOST_SERIAL).decode())).action


def reloaded(d, before: dict, *, ok: bool) -> dict:
    key = "reloads" if ok else "reload_failures"
    st = wait_for(lambda: (lambda st: st if st[key] > before[key] else None)(status_json(d)), 10,
                  f"a {'successful' if ok else 'rejected'} reload")
    # Every reload ends with READY=1 on the notify socket; read it, as systemd would.
    # (Unread, the datagram queue fills after a few reloads and sd_notify then blocks
    # hookd's event loop: see the report on hookd/daemon.py _notify.)
    d.wait_notification("READY=1", 10)
    return st


def line_of(path, text) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_config_faults_keep_last_good_config(hookd_factory, record):
    """Invalid reload, bad rule UUID, unknown template placeholder: each rejected with file:line in log and status, last good config kept; a removed conf.d file's keys revert."""
    d = hookd_factory(config_extra="[enforce]\non_mismatch = deny\n")
    confd = d.dir / "conf.d"
    confd.mkdir()
    host_conf = confd / "10-host.conf"
    host_conf.write_text("[policy]\nmode = host\n")
    d.start()
    st = status_json(d)
    assert st["config"]["mode"] == "host" and verdict(d) == "allow"

    def rejected(fault, path, text, reason):
        nonlocal st
        before = st
        path.write_text(text)
        st = reloaded(d, before, ok=False)
        where = f"{path}:{line_of(path, text.splitlines()[-1])}: "
        shown = run_hookctl("status", "--socket", d.socket).stdout.decode()
        in_log = f"rejected: {where}{reason}" in d.log_text()
        in_status = f"last reload rejected: {where}{reason}" in shown
        kept = st["config"]["mode"] == "host" and st["config"]["rules"] == 0 and verdict(d) == "allow"
        record(fault, "reload rejected with file:line: reason in log and `hookctl status`; last good config stays",
               f"log: {in_log}, status: {in_status}, still mode host and allowing: {kept} "
               f"({where.rsplit('/', 1)[-1]}{reason})", ok=in_log and in_status and kept)
        assert in_log and in_status and kept, (st, shown)

    # 1. a syntactically broken value in the main file
    good_main = d.config.read_text()
    rejected("invalid value on reload", d.config, good_main + "[enforce]\non_mismatch = sometimes\n",
             "expected one of warn, deny, got 'sometimes'")
    before = st
    d.config.write_text(good_main)
    st = reloaded(d, before, ok=True)

    # 2. a rule whose instance list holds something that is not a UUID
    rule = confd / "20-rule.conf"
    rejected("rule with a bad UUID", rule, "[rule:legacy]\nmode = unique\ninstance = not-a-uuid\n",
             "'not-a-uuid' is not a UUID")
    before = st
    rule.unlink()
    st = reloaded(d, before, ok=True)

    # 3. a template with a placeholder hookd does not know
    tpl = confd / "30-template.conf"
    rejected("template with an unknown placeholder", tpl, "[policy]\nmode = template\ntemplate = SN-{hostname}\n",
             "template 'SN-{hostname}': unknown placeholder {hostname}")
    before = st
    tpl.unlink()
    st = reloaded(d, before, ok=True)
    assert st["config"]["mode"] == "host"

    # 4. the conf.d file that set mode = host is removed: its key reverts to the default
    before = st
    host_conf.unlink()
    st = reloaded(d, before, ok=True)
    now = verdict(d)
    record("conf.d file removed", "its keys revert to the defaults (mode unique: host serial denied)",
           f"mode {st['config']['mode']}, host serial {now}, sources {[s.rsplit('/', 1)[-1] for s in st['config']['sources']]}",
           ok=st["config"]["mode"] == "unique" and now == "deny")
    assert st["config"]["mode"] == "unique" and now == "deny"
    assert st["reload_failures"] == 3 and st["last_reload_error"] is None
