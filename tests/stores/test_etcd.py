"""The etcd store's last-boot records: which rows count, coalescing, the writer's queue.

No etcd here: a fake gateway client records what the store sends (the real etcd's
answers are tests/integration/test_etcd_store.py's).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from hookd.stores import etcd as etcdstore
from hookd.config import StoreSettings
from hookd.errors import StoreError
from hookd.stores.etcd import EtcdPinStore, lastboot_record

UUID = "8c0f5f4e-3d2a-4b1c-9e8f-7a6b5c4d3e2f"
OTHER = "00000000-0000-4000-8000-0000000000b1"
KEY = f"/hookd/lastboot/{UUID}"


def row(operation="started", uuid=UUID, time="2026-12-03T10:00:00.000+00:00", serial="S-1", **kw):
    base = {c: None for c in ("host", "domain", "nova_name", "project", "flavor", "serial_wanted", "verdict",
                              "rule", "action", "detail")}
    base.update(time=time, operation=operation, instance_uuid=uuid, serial_seen=serial, host="hv-1")
    base.update(kw)
    return base


def at(second: int) -> str:
    return f"2026-12-03T10:00:{second:02d}.000+00:00"


def unb64(text):
    return base64.b64decode(text).decode()


def txn_key(body) -> str:
    return unb64(body["success"][0]["request_put"]["key"])


def txn_value(body) -> dict:
    return json.loads(unb64(body["success"][0]["request_put"]["value"]))


class FakeGateway:
    """The daemon's AsyncClient (hookd.stores.etcdgateway), answering like etcd: down (StoreError) or up."""

    def __init__(self, answer=None):
        self.up = True
        self.calls = []
        self.answer = answer or (lambda path, body: {"succeeded": True})
        self.sent = None            # set by the test: an asyncio.Event, set at every txn
        self._refused = None        # made inside the loop (Python 3.9 binds an Event at creation)

    @property
    def refused(self) -> asyncio.Event:
        """Set when a write was tried while down."""
        if self._refused is None:
            self._refused = asyncio.Event()
        return self._refused

    async def call(self, path, body):
        if not self.up:
            if path != "/v3/kv/range":
                self.refused.set()
            raise StoreError("etcd unreachable (fake: down)")
        if path == "/v3/kv/range":
            return {"kvs": [], "header": {"revision": "1"}}
        self.calls.append((path, body))
        if self.sent is not None:
            self.sent.set()
        return self.answer(path, body)

    async def stream(self, path, body):
        if not self.up:
            raise StoreError("etcd unreachable (fake: down)")
        await asyncio.Event().wait()        # a watch with no events, until cancelled
        yield {}


def store(client=None) -> EtcdPinStore:
    s = EtcdPinStore(StoreSettings(backend="etcd"), host="hv-1")
    s._client = client
    return s


# ----------------------------------------------------------------- which rows count

@pytest.mark.parametrize("operation", ["started", "observed"])
def test_a_boot_row_becomes_the_instances_last_boot(operation):
    uuid, value = lastboot_record(row(operation, boot="7:1700000000", uuid=UUID.upper()))
    assert uuid == UUID
    assert json.loads(value) == {"time": at(0), "host": "hv-1", "serial": "S-1", "boot": "7:1700000000",
                                 "operation": operation}
    assert value.startswith('{"time":"2026-12-03T10:00:00.000+00:00",')     # time first: bytes order as times


@pytest.mark.parametrize("r", [row("prepare"), row("stopped"), row("define"), row("pin"), row("reconcile"),
                               row("started", uuid=None), row("started", uuid="not-a-uuid"), {}])
def test_every_other_row_is_ignored(r):
    assert lastboot_record(r) is None


def test_time_is_one_fixed_width_utc_form_and_boot_may_be_absent():
    r = row(time="2026-12-03T11:30:00+01:00")
    assert "boot" not in r                      # a row from before hookd kept boot keys
    value = json.loads(lastboot_record(r)[1])
    assert value["time"] == "2026-12-03T10:30:00.000+00:00" and value["boot"] is None
    # no host in the row: the store's own
    assert json.loads(lastboot_record(row(host=None), "hv-9")[1])["host"] == "hv-9"
    # an unreadable time is replaced by now, still in the same form
    assert len(json.loads(lastboot_record(row(time="yesterday"))[1])["time"]) == len(at(0))


# ------------------------------------------------------------------------ coalescing

def test_queue_keeps_the_newest_boot_per_instance_and_ignores_other_rows():
    s = store()
    for i in range(1, 6):
        s.mirror_audit(row("prepare", time=at(i), serial=f"S-{i}"))
        s.mirror_audit(row("started", time=at(i), serial=f"S-{i}"))
        s.mirror_audit(row("stopped", time=at(i), serial=f"S-{i}"))
    s.mirror_audit(row("observed", uuid=OTHER, time=at(3), serial="O-1"))
    assert s.status()["lastboot_queued"] == 2
    assert json.loads(s._lastboot[UUID])["serial"] == "S-5"
    # an older boot recorded late does not replace the newer one queued
    s.mirror_audit(row("observed", time=at(2), serial="LATE"))
    assert json.loads(s._lastboot[UUID])["serial"] == "S-5"
    assert "audit_queued" not in s.status()


def test_queue_is_bounded_oldest_instance_dropped_and_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(etcdstore, "LASTBOOT_QUEUE_MAX", 3)
    s = store()
    uuids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="hookd.etcd"):
        for i, u in enumerate(uuids):
            s.mirror_audit(row(uuid=u, time=at(i)))
    assert list(s._lastboot) == uuids[2:]
    assert s.status()["lastboot_dropped"] == 2
    assert sum("last boots waiting" in m for m in caplog.messages) == 1


def test_send_writes_one_txn_per_instance_with_the_newest_boot():
    fake = FakeGateway()
    s = store(fake)
    for i in range(1, 11):                  # ten boots of one instance while nothing was sent
        s.mirror_audit(row(time=at(i), serial=f"S-{i}"))
    s.mirror_audit(row(uuid=OTHER, time=at(4), serial="O-1"))
    asyncio.run(s.send_lastboots())
    assert [(p, txn_key(b), txn_value(b)["serial"]) for p, b in fake.calls] == \
        [("/v3/kv/txn", KEY, "S-10"), ("/v3/kv/txn", f"/hookd/lastboot/{OTHER}", "O-1")]
    st = s.status()
    assert (st["lastboot_queued"], st["lastboot_written"], st["lastboot_stale"]) == (0, 2, 0)


def test_txn_writes_only_over_an_older_value_or_creates():
    s = store()
    uuid, value = lastboot_record(row())
    body = s._lastboot_txn(uuid, value)
    cmp = body["compare"][0]
    assert (unb64(cmp["key"]), cmp["target"], cmp["result"], unb64(cmp["value"])) == (KEY, "VALUE", "LESS", value)
    inner = body["failure"][0]["request_txn"]
    assert inner["compare"][0]["target"] == "CREATE" and inner["compare"][0]["create_revision"] == "0"
    assert txn_key(inner) == KEY and "request_range" in inner["failure"][0]


def test_a_boot_recorded_while_sending_is_sent_next():
    s = None

    def answer(path, body):
        if txn_value(body)["serial"] == "S-1":
            s.mirror_audit(row(time=at(2), serial="S-2"))    # arrives while S-1 is on the wire
        return {"succeeded": True}
    fake = FakeGateway(answer)
    s = store(fake)
    s.mirror_audit(row(time=at(1), serial="S-1"))
    asyncio.run(s.send_lastboots())
    assert [txn_value(b)["serial"] for _, b in fake.calls] == ["S-1", "S-2"]
    assert s.status()["lastboot_queued"] == 0


def stored_answer(stored: str):
    kv = {"key": base64.b64encode(KEY.encode()).decode(), "value": base64.b64encode(stored.encode()).decode()}
    return {"succeeded": False, "responses": [{"response_txn": {"responses": [{"response_range": {"kvs": [kv]}}]}}]}


def test_a_newer_boot_in_etcd_is_kept_and_counted_stale():
    newer = lastboot_record(row(time=at(9), serial="FROM-HV-2", host="hv-2"))[1]
    fake = FakeGateway(lambda p, b: stored_answer(newer))
    s = store(fake)
    s.mirror_audit(row(time=at(1)))
    asyncio.run(s.send_lastboots())
    assert len(fake.calls) == 1                       # no second write over the newer boot
    st = s.status()
    assert (st["lastboot_queued"], st["lastboot_written"], st["lastboot_stale"]) == (0, 0, 1)


def test_the_same_value_already_stored_is_neither_stale_nor_rewritten():
    value = lastboot_record(row())[1]
    fake = FakeGateway(lambda p, b: stored_answer(value))
    s = store(fake)
    s.mirror_audit(row())
    asyncio.run(s.send_lastboots())
    assert len(fake.calls) == 1 and (s.lastboot_written, s.lastboot_stale) == (0, 0)


def test_a_foreign_value_under_the_key_is_overwritten(caplog):
    fake = FakeGateway(lambda p, b: stored_answer("zzz not ours") if p == "/v3/kv/txn" else {})
    s = store(fake)
    s.mirror_audit(row())
    with caplog.at_level(logging.WARNING, logger="hookd.etcd"):
        asyncio.run(s.send_lastboots())
    assert [p for p, _ in fake.calls] == ["/v3/kv/txn", "/v3/kv/put"]
    assert json.loads(unb64(fake.calls[1][1]["value"]))["serial"] == "S-1"
    assert any("does not hold a hookd last boot" in m for m in caplog.messages)


def test_an_answer_that_says_nothing_is_an_error_and_the_boot_stays_queued():
    s = store(FakeGateway(lambda p, b: {"succeeded": False, "responses": []}))
    s.mirror_audit(row())
    with pytest.raises(StoreError, match="neither wrote the last boot"):
        asyncio.run(s.send_lastboots())
    assert s.status()["lastboot_queued"] == 1


# ---------------------------------------------------- the daemon's loops, etcd away

def test_outage_many_boots_queued_one_write_each_when_etcd_is_back(tmp_path, monkeypatch):
    """The real start()/writer loop: boots recorded while etcd is down are sent as one
    write per instance (the newest) once it is back; nothing for the other rows."""
    fake = FakeGateway()
    fake.up = False
    monkeypatch.setattr(etcdstore, "AsyncClient", lambda settings: fake)

    async def go():
        s = EtcdPinStore(StoreSettings(backend="etcd"), host="hv-1", state_dir=str(tmp_path))
        await s.start()
        try:
            for i in range(1, 21):
                for op in ("define", "prepare", "started", "stopped"):
                    s.mirror_audit(row(op, time=at(i), serial=f"S-{i}"))
                s.mirror_audit(row("observed", uuid=OTHER, time=at(i), serial=f"O-{i}"))
                if i == 1:
                    await asyncio.wait_for(fake.refused.wait(), 15)    # the writer tried, etcd was down
            assert s.status()["lastboot_queued"] == 2 and fake.calls == []
            assert not s.status()["reachable"]
            fake.sent = asyncio.Event()
            fake.up = True
            while len(fake.calls) < 2 or s.status()["lastboot_queued"]:
                fake.sent.clear()
                await asyncio.wait_for(fake.sent.wait(), 15)   # the writer's backoff is at most 10 s
            return s.status()
        finally:
            await s.aclose()
    st = asyncio.run(go())
    assert sorted((txn_key(b), txn_value(b)["serial"]) for _, b in fake.calls) == \
        sorted([(KEY, "S-20"), (f"/hookd/lastboot/{OTHER}", "O-20")])
    assert (st["lastboot_queued"], st["lastboot_written"]) == (0, 2)
    assert not any("/audit/" in json.dumps(b) for _, b in fake.calls)
