"""Typed messages (hookd.ipc.messages): the bytes on the wire, decoding, errors, and the
daemon's control dispatch by kind."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re

import pytest

from hookd.errors import HookdError, ProtocolError
from hookd.ipc import messages as m
from hookd.ipc import wire

REPO = pathlib.Path(__file__).resolve().parents[2]

#: Each message as today's code wrote it (byte for byte): hookctl and the worker of one
#: installation must keep understanding the daemon of the same one.
GOLDEN = [
    (m.StatusQuery(), b'{"v":1,"op":"status"}'),
    (m.ReconcileQuery(dry_run=True), b'{"v":1,"op":"reconcile","dry_run":true}'),
    (m.ReconcileQuery(), b'{"v":1,"op":"reconcile","dry_run":false}'),
    (m.ErrorReply("unsupported request 'x'"), b'{"v":1,"error":"unsupported request \'x\'"}'),
    (m.ReconcileReply([{"action": "ok"}]), b'{"v":1,"items":[{"action":"ok"}]}'),
    (m.StatusReply({"version": "0.3", "pid": 7}), b'{"v":1,"version":"0.3","pid":7}'),
    (m.Stop(), b'{"op":"stop"}'),
    (m.Reload(), b'{"op":"reload"}'),
    (m.NoteHook("u-1", "prepare", 12.5), b'{"op":"note_hook","instance_uuid":"u-1","hook":"prepare","t":12.5}'),
    (m.ReconcileRequest(id=3, dry_run=False), b'{"op":"reconcile","id":3,"dry_run":false}'),
    (m.PinAnswer(id=4, instance_uuid="u-1", serial=None), b'{"op":"pin","id":4,"instance_uuid":"u-1","serial":null}'),
    (m.PinAnswer(id=4, instance_uuid="u-1", serial="S1"), b'{"op":"pin","id":4,"instance_uuid":"u-1","serial":"S1"}'),
    (m.AuditRow({"operation": "started", "domain": "d"}), b'{"op":"audit","row":{"operation":"started","domain":"d"}}'),
    (m.WorkerStatus(events={"connected": True}, reconcile={"sweeps": 1}),
     b'{"op":"status","events":{"connected":true},"reconcile":{"sweeps":1}}'),
    (m.PinRequest(id=5, instance_uuid="u-2"), b'{"op":"pin","id":5,"instance_uuid":"u-2"}'),
    (m.ReconcileResult(id=6, result=m.ReconcileReply([])), b'{"op":"reply","id":6,"result":{"v":1,"items":[]}}'),
    (m.ReconcileResult(id=6, result=m.ErrorReply("no")), b'{"op":"reply","id":6,"result":{"v":1,"error":"no"}}'),
    (m.Resync(why="a reconnect to libvirt", running=[{"boot": "b"}], pending=["u-3"]),
     b'{"op":"resync","why":"a reconnect to libvirt","running":[{"boot":"b"}],"pending":["u-3"]}'),
]


@pytest.mark.parametrize("msg,body", GOLDEN, ids=[f"{type(g[0]).__name__}-{i}" for i, g in enumerate(GOLDEN)])
def test_bytes_on_the_wire_are_todays(msg, body):
    assert wire.encode(msg.to_dict()) == wire.HEADER.pack(len(body)) + body


TABLES = {"control": m.CONTROL, "to_worker": m.TO_WORKER, "from_worker": m.FROM_WORKER}


@pytest.mark.parametrize("msg,body", [g for g in GOLDEN if "op" in wire.decode_body(g[1])],
                         ids=lambda v: type(v).__name__ if isinstance(v, m.Message) else "")
def test_every_kind_decodes_back_to_itself(msg, body):
    """Each message with an op is in exactly the table of its direction and round-trips."""
    tables = [t for t in TABLES.values() if type(msg) in t.values()]
    assert len(tables) == 1
    decoded = m.decode(tables[0], wire.decode_body(body))
    assert type(decoded) is type(msg) and decoded == msg


def test_the_tables_name_each_class_by_its_kind():
    for name, table in TABLES.items():
        for kind, cls in table.items():
            assert kind == cls.KIND or kind in getattr(cls, "KINDS", ()), (name, kind)
    assert set(m.CONTROL) == {"status", "reconcile", "prepare", "migrate", "restore"}
    assert set(m.TO_WORKER) == {"stop", "reload", "note_hook", "reconcile", "pin"}
    assert set(m.FROM_WORKER) == {"audit", "status", "pin", "reply", "resync"}
    # Replies are matched to requests by id: each one has it, and only they are REPLY.
    replies = {cls for t in TABLES.values() for cls in t.values() if cls.REPLY}
    assert replies == {m.PinAnswer, m.ReconcileResult}


@pytest.mark.parametrize("table,obj", [
    (m.CONTROL, {"v": 1, "op": "nope"}),
    (m.CONTROL, {"v": 1}),
    (m.CONTROL, {"v": 1, "op": None}),
    (m.CONTROL, {"v": 1, "op": ["prepare"]}),           # unhashable: must not be a TypeError
    (m.CONTROL, {"v": 1, "op": {"a": 1}}),
    (m.TO_WORKER, {"op": "audit", "row": {}}),           # a worker-to-daemon kind
    (m.FROM_WORKER, {"op": "note_hook"}),                # a daemon-to-worker kind
])
def test_an_unknown_kind_is_a_protocol_error_naming_it(table, obj):
    with pytest.raises(m.UnknownKind) as exc:
        m.decode(table, obj)
    assert isinstance(exc.value, ProtocolError) and isinstance(exc.value, HookdError)
    assert exc.value.kind == obj.get("op")
    assert repr(obj.get("op")) in str(exc.value)


@pytest.mark.parametrize("table,obj,field", [
    (m.TO_WORKER, {"op": "reconcile", "dry_run": True}, "id"),
    (m.TO_WORKER, {"op": "pin", "instance_uuid": "u"}, "id"),
    (m.TO_WORKER, {"op": "pin", "id": True, "instance_uuid": "u"}, "id"),     # a bool is no id
    (m.FROM_WORKER, {"op": "pin", "id": "7", "instance_uuid": "u"}, "id"),
    (m.FROM_WORKER, {"op": "reply", "result": {"v": 1, "items": []}}, "id"),
    (m.FROM_WORKER, {"op": "reply", "id": 1, "result": {"v": 1, "items": "x"}}, "result.items"),
    (m.FROM_WORKER, {"op": "reply", "id": 1, "result": [1]}, "result"),
    (m.FROM_WORKER, {"op": "audit"}, "row"),
    (m.FROM_WORKER, {"op": "audit", "row": ["x"]}, "row"),
    (m.FROM_WORKER, {"op": "resync", "why": "w"}, "running"),
    (m.FROM_WORKER, {"op": "resync", "running": {}}, "running"),
])
def test_a_missing_or_ill_typed_field_is_a_protocol_error_naming_it(table, obj, field):
    with pytest.raises(m.MissingField) as exc:
        m.decode(table, obj)
    assert isinstance(exc.value, m.InvalidMessage) and isinstance(exc.value, ProtocolError)
    assert exc.value.field == field and exc.value.kind == obj["op"]


def test_optional_fields_read_as_the_handlers_always_read_them():
    assert m.decode_control({"op": "reconcile"}) == m.ReconcileQuery(dry_run=False)
    assert m.decode_control({"op": "reconcile", "dry_run": 1}) == m.ReconcileQuery(dry_run=True)
    assert m.decode(m.FROM_WORKER, {"op": "resync", "running": []}) == m.Resync("a reconnect", [], [])
    assert m.decode(m.FROM_WORKER, {"op": "resync", "running": [], "pending": "x"}).pending == []
    assert m.decode(m.TO_WORKER, {"op": "note_hook"}) == m.NoteHook("", "None", None)
    assert m.decode(m.TO_WORKER, {"op": "note_hook", "t": "soon"}).t is None
    assert m.decode(m.FROM_WORKER, {"op": "status", "events": "x"}) == m.WorkerStatus(None, None)
    assert m.decode(m.TO_WORKER, {"op": "pin", "id": 1, "serial": 5}).serial is None
    assert m.decode_control({"op": "migrate", "domain": "d"}) == m.LegacyHookCall("migrate", "d")


def test_a_reconcile_result_without_a_result_is_an_error_reply():
    msg = m.decode(m.FROM_WORKER, {"op": "reply", "id": 2})
    assert msg.result == m.ErrorReply("empty answer from the libvirt worker")
    assert m.reconcile_outcome({"v": 1, "error": "down"}) == m.ErrorReply("down")


def test_protocol_version_is_defined_once():
    where = [str(p.relative_to(REPO)) for p in (REPO / "hookd").rglob("*.py")
             if re.search(r"^PROTOCOL_VERSION\s*=", p.read_text(), re.M)]
    assert where == ["hookd/ipc/messages.py"]


# ------------------------------------------------------------------ the daemon's dispatch

class FakeWorker:
    def __init__(self):
        self.asked = []

    async def reconcile(self, dry_run):
        self.asked.append(dry_run)
        return m.ReconcileReply([{"domain": "d", "action": "fixed"}])


@pytest.fixture
def daemon(tmp_path):
    from hookd.config import load_config
    from hookd.daemon import Daemon
    conf = tmp_path / "hookd.conf"
    conf.write_text("[policy]\nmode = unique\n")
    d = Daemon(load_config(str(conf)), str(conf))
    d.worker = FakeWorker()
    d.status = lambda: {"version": "test", "pid": 1}
    return d


def dispatch(daemon, obj):
    return asyncio.run(daemon.dispatch(obj))


def test_dispatch_answers_each_kind_by_its_handler(daemon):
    assert dispatch(daemon, {"v": 1, "op": "status"}) == {"v": 1, "version": "test", "pid": 1}
    assert list(dispatch(daemon, {"v": 1, "op": "status"}))[0] == "v"
    assert dispatch(daemon, {"v": 1, "op": "reconcile", "dry_run": True}) == \
        {"v": 1, "items": [{"domain": "d", "action": "fixed"}]}
    dispatch(daemon, {"v": 1, "op": "reconcile"})
    assert daemon.worker.asked == [True, False]


@pytest.mark.parametrize("op", ["nope", None, ["prepare"], {"a": 1}, 1, ""])
def test_dispatch_refuses_an_unknown_kind_with_todays_answer(daemon, op):
    obj = {"v": 1, "op": op} if op is not None else {"v": 1}
    assert dispatch(daemon, obj) == {"v": 1, "error": f"unsupported request {op!r}"}
    assert daemon.worker.asked == []


def test_dispatch_refuses_an_old_json_hook_call_with_a_warning(daemon, caplog):
    with caplog.at_level(logging.WARNING, logger="hookd"):
        reply = dispatch(daemon, {"v": 1, "op": "prepare", "sub": "begin", "domain": "instance-1"})
    assert reply == {"v": 1, "error": "unsupported request 'prepare'"}
    assert "hook call 'prepare' for domain 'instance-1' in the old JSON framing" in caplog.text
