"""hookd.ipc.channel in memory: a StreamReader fed bytes, a writer that collects them.
Tests wait on events the fake writer sets, never on sleeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hookd.errors import HookdError, ProtocolError
from hookd.ipc import messages as m
from hookd.ipc import wire
from hookd.ipc.channel import Channel, ChannelClosed, RequestTimeout
from tests.harness.memstream import CollectingWriter as FakeWriter


def frame(msg) -> bytes:
    return wire.encode(msg.to_dict() if isinstance(msg, m.Message) else msg)


def make(incoming=m.FROM_WORKER, handlers=None):
    reader = asyncio.StreamReader()
    writer = FakeWriter()
    ch = Channel(reader, writer, incoming=incoming, handlers=handlers or {}, peer="the peer",
                 log=logging.getLogger("test.channel"))
    return ch, reader, writer


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_send_writes_the_framed_message():
    async def go():
        ch, _reader, writer = make()
        assert ch.send(m.NoteHook("u", "prepare", 1.0))
        assert bytes(writer.data) == wire.encode({"op": "note_hook", "instance_uuid": "u", "hook": "prepare",
                                                  "t": 1.0})
    run(go())


def test_serve_hands_each_message_to_the_handler_of_its_kind_and_returns_at_eof():
    got = []

    async def go():
        ch, reader, _writer = make(handlers={m.AuditRow: lambda msg: got.append(("audit", msg)),
                                             m.WorkerStatus: lambda msg: got.append(("status", msg))})
        reader.feed_data(frame(m.AuditRow({"operation": "started"})) + frame(m.WorkerStatus({"a": 1}, None))
                         + frame(m.AuditRow({"operation": "stopped"})))
        reader.feed_eof()
        await ch.serve()
    run(go())
    assert got == [("audit", m.AuditRow({"operation": "started"})), ("status", m.WorkerStatus({"a": 1}, None)),
                   ("audit", m.AuditRow({"operation": "stopped"}))]


def test_a_request_gets_the_reply_with_its_id_even_out_of_order():
    async def go():
        ch, reader, writer = make(incoming=m.TO_WORKER)
        serving = asyncio.ensure_future(ch.serve())
        first = asyncio.ensure_future(ch.request(lambda i: m.PinRequest(i, "u-1"), 5))
        second = asyncio.ensure_future(ch.request(lambda i: m.PinRequest(i, "u-2"), 5))
        sent1 = await writer.next_message(1)
        sent2 = await writer.next_message(2)
        assert (sent1["instance_uuid"], sent2["instance_uuid"]) == ("u-1", "u-2")
        assert sent1["id"] != sent2["id"]
        assert ch.waiting == 2
        reader.feed_data(frame(m.PinAnswer(sent2["id"], "u-2", "S2")) + frame(m.PinAnswer(sent1["id"], "u-1", "S1")))
        assert (await first).serial == "S1"
        assert (await second).serial == "S2"
        assert ch.waiting == 0
        reader.feed_eof()
        await serving
    run(go())


def test_a_reply_nobody_waits_for_is_dropped_and_serving_goes_on():
    got = []

    async def go():
        ch, reader, _writer = make(incoming=m.TO_WORKER, handlers={m.Reload: got.append})
        reader.feed_data(frame(m.PinAnswer(99, "u", "S")) + frame(m.Reload()))
        reader.feed_eof()
        await ch.serve()
    run(go())
    assert got == [m.Reload()]


def test_a_request_without_answer_times_out_and_is_forgotten():
    async def go():
        ch, _reader, writer = make(incoming=m.TO_WORKER)
        with pytest.raises(RequestTimeout, match=r"no answer from the peer within 0\.05 s"):
            await ch.request(lambda i: m.PinRequest(i, "u"), 0.05)
        assert ch.waiting == 0 and len(writer.messages()) == 1
    run(go())


def test_closing_fails_the_requests_still_waiting():
    async def go():
        ch, _reader, writer = make(incoming=m.TO_WORKER)
        pending = asyncio.ensure_future(ch.request(lambda i: m.PinRequest(i, "u"), 5))
        await writer.next_message(1)
        ch.close("the peer exited")
        with pytest.raises(ChannelClosed, match="^the peer exited$"):
            await pending
        assert writer.closed and not ch.open
        assert not ch.send(m.Reload())                         # nothing after close
        with pytest.raises(ChannelClosed, match="cannot reach the peer"):
            await ch.request(lambda i: m.PinRequest(i, "u"), 5)
        assert ch.waiting == 0
    run(go())


def test_unknown_and_invalid_messages_are_logged_and_skipped(caplog):
    got = []

    async def go():
        ch, reader, _writer = make(handlers={m.AuditRow: got.append})
        reader.feed_data(frame({"op": "bogus"}) + frame({"op": "audit"}) + frame({"op": ["x"]})
                         + frame(m.AuditRow({"a": 1})))
        reader.feed_eof()
        await ch.serve()
    with caplog.at_level(logging.ERROR, logger="test.channel"):
        run(go())
    assert got == [m.AuditRow({"a": 1})]
    assert "unknown message 'bogus' from the peer; ignored" in caplog.text
    assert "invalid message from the peer: 'audit' message: field 'row' missing; ignored" in caplog.text
    assert "unknown message ['x'] from the peer" in caplog.text


def test_a_known_kind_without_handler_is_logged_and_skipped(caplog):
    async def go():
        ch, reader, _writer = make()
        reader.feed_data(frame(m.AuditRow({})))
        reader.feed_eof()
        await ch.serve()
    with caplog.at_level(logging.ERROR, logger="test.channel"):
        run(go())
    assert "message 'audit' from the peer has no handler here; ignored" in caplog.text


def test_an_undecodable_frame_ends_serve_with_a_protocol_error():
    async def go():
        ch, reader, _writer = make()
        reader.feed_data(wire.HEADER.pack(3) + b"{x}")
        reader.feed_eof()
        await ch.serve()
    with pytest.raises(ProtocolError) as exc:
        run(go())
    assert isinstance(exc.value, HookdError) and exc.value.raw == b"{x}"


def test_a_handler_error_ends_serve_unless_the_owner_takes_it():
    def broken(msg):
        raise ValueError(f"bug on {msg.KIND}")

    async def go(on_error):
        ch, reader, _writer = make(handlers={m.AuditRow: broken})
        reader.feed_data(frame(m.AuditRow({})) + frame(m.AuditRow({})))
        reader.feed_eof()
        await ch.serve(on_handler_error=on_error)

    with pytest.raises(ValueError, match="bug on audit"):
        run(go(None))
    taken = []
    run(go(lambda msg, err: taken.append((msg.KIND, str(err)))))
    assert taken == [("audit", "bug on audit"), ("audit", "bug on audit")]


def test_a_message_too_large_to_frame_is_not_sent():
    async def go():
        ch, _reader, writer = make()
        assert not ch.send(m.AuditRow({"x": "y" * (wire.MAX_MESSAGE + 1)}))
        assert writer.data == b""
    run(go())


def test_a_channel_made_before_the_loop_runs_works_inside_it():
    """No asyncio object in __init__: a channel built outside any loop serves in asyncio.run."""
    class Reader:
        """Stands in for a StreamReader until the loop runs (StreamReader() itself binds on 3.9)."""
        real = None

        async def readexactly(self, n):
            return await self.real.readexactly(n)

    reader = Reader()
    writer = FakeWriter()            # makes its Event only once the loop runs
    ch = Channel(reader, writer, incoming=m.TO_WORKER, handlers={}, peer="the peer")
    assert not [k for k, v in vars(ch).items()
                if isinstance(v, (asyncio.Future, asyncio.Event, asyncio.Lock, asyncio.Queue))]

    async def go():
        reader.real = asyncio.StreamReader()
        pending = asyncio.ensure_future(ch.request(lambda i: m.PinRequest(i, "u"), 5))
        serving = asyncio.ensure_future(ch.serve())
        sent = await writer.next_message(1)
        reader.real.feed_data(frame(m.PinAnswer(sent["id"], "u", "S")))
        reader.real.feed_eof()
        assert (await pending).serial == "S"
        await serving
    run(go())
