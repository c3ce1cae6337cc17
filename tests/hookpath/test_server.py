"""hookd.hookpath.server: a real HookServer on a UNIX socket in a short directory, with
clients in the same event loop (and one in a child process with another uid).

A shim request (hookd.hookpath.shimwire) goes to the hook callable, a JSON message
(hookd.ipc.wire) to the dispatch; a bad request is dropped without an answer (the shim
then applies its on_unreachable) and the server goes on serving; drain() waits for a
request in flight. Waits are asyncio events and bounded reads, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import subprocess
import sys

import pytest

from hookd.hookpath import server as servermod
from hookd.hookpath import shimwire
from hookd.hookpath.server import HookServer
from hookd.hookpath.shimwire import HookReply, HookRequest
from hookd.ipc import wire
from tests.harness.run import hookd_env

LOG = "hookd.hookpath.server"
REQ = HookRequest(op="prepare", sub="begin", domain="instance-00000001", extra="-", xml=b"<domain/>",
                  deadline=1700000000.5)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Recorder:
    """The server's two callables; each records what it was given."""

    def __init__(self, reply=HookReply(), answer=None):
        self.hooks = []
        self.messages = []
        self.reply = reply
        self.answer = answer if answer is not None else {"v": 1, "ok": True}

    def hook(self, req):
        self.hooks.append(req)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    async def dispatch(self, msg):
        self.messages.append(msg)
        return self.answer


@contextlib.asynccontextmanager
async def serving(path, rec, **kw):
    srv = HookServer(str(path), rec.dispatch, rec.hook, **kw)
    await srv.start()
    try:
        yield srv
    finally:
        srv.stop_accepting()
        await srv.drain(5)


async def connect(path):
    return await asyncio.open_unix_connection(str(path))


async def read_reply(reader) -> HookReply:
    head = await asyncio.wait_for(reader.readuntil(b"\n"), 5)
    length = int(head.split()[2])
    return shimwire.decode_reply(head + await asyncio.wait_for(reader.readexactly(length), 5))


async def closed_without_answer(reader) -> bool:
    """True when the server closed the connection and sent nothing (bounded)."""
    return await asyncio.wait_for(reader.read(), 5) == b""


# ------------------------------------------------------------------ the two formats
def test_shim_request_is_answered_by_the_hook_callable(short_dir):
    rec = Recorder(reply=HookReply("deny", "serial mismatch\non migrate"))

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            assert stat.S_IMODE(os.stat(short_dir / "h.sock").st_mode) == 0o600
            reader, writer = await connect(srv.path)
            writer.write(shimwire.encode_request(REQ))
            reply = await read_reply(reader)
            writer.close()
            return reply, srv.served
    reply, served = run(go())
    assert reply == HookReply("deny", "serial mismatch on migrate")      # one line on the wire
    assert rec.hooks == [REQ] and rec.messages == []
    assert served == 1


def test_several_requests_on_one_connection_both_formats(short_dir):
    rec = Recorder()

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            reader, writer = await connect(srv.path)
            writer.write(shimwire.encode_request(REQ))
            first = await read_reply(reader)
            writer.write(wire.encode({"v": 1, "op": "status"}))
            second = await asyncio.wait_for(wire.read_message(reader), 5)
            writer.write(shimwire.encode_request(REQ))
            third = await read_reply(reader)
            writer.close()
            return first, second, third, srv.served
    first, second, third, served = run(go())
    assert first == third == HookReply() and second == {"v": 1, "ok": True}
    assert len(rec.hooks) == 2 and rec.messages == [{"v": 1, "op": "status"}] and served == 3


def test_json_control_message_goes_to_the_dispatch(short_dir):
    rec = Recorder(answer={"v": 1, "items": [1, 2]})

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            reader, writer = await connect(srv.path)
            writer.write(wire.encode({"v": 1, "op": "reconcile", "dry_run": True}))
            answer = await asyncio.wait_for(wire.read_message(reader), 5)
            writer.close()
            return answer
    assert run(go()) == {"v": 1, "items": [1, 2]}
    assert rec.messages == [{"v": 1, "op": "reconcile", "dry_run": True}] and rec.hooks == []


# ------------------------------------------------------------------ bad requests
BAD = {
    "garbled shim header": b"HOOKD1 PREPARE begin 0 1 1 1\nabc",
    "shim header over MAX_HEADER": b"HOOKD1 prepare begin 0 1 1 " + b"9" * shimwire.MAX_HEADER + b"\n",
    # no "\n" at all: cut at the stream's 64 KiB limit (short of it, by READ_TIMEOUT_S)
    "shim header without end": b"HOOKD1 prepare begin 0 1 1 " + b"9" * (70 * 1024),
    "oversized shim XML": b"HOOKD1 prepare begin 0 1 1 %d\n" % (shimwire.MAX_XML + 2),
    "oversized JSON": wire.HEADER.pack(wire.MAX_MESSAGE + 1),
    "JSON not an object": wire.HEADER.pack(5) + b"[1,2]",
    "undecodable JSON": wire.HEADER.pack(3) + b"{\xff}",
    "truncated shim body": shimwire.encode_request(REQ)[:-3],
    "truncated JSON header": b"\x00\x00",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_request_is_dropped_without_an_answer_and_the_server_goes_on(short_dir, caplog, case):
    rec = Recorder()

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            reader, writer = await connect(srv.path)
            writer.write(BAD[case])
            if case.startswith("truncated"):
                writer.write_eof()                  # the client gives up mid-request
            dropped = await closed_without_answer(reader)
            writer.close()
            reader, writer = await connect(srv.path)        # the next client is served
            writer.write(shimwire.encode_request(REQ))
            reply = await read_reply(reader)
            writer.close()
            return dropped, reply, srv.served
    with caplog.at_level(logging.WARNING, logger=LOG):
        dropped, reply, served = run(go())
    assert dropped and reply == HookReply() and served == 1
    assert rec.messages == [] and rec.hooks == [REQ]
    assert "sent a bad message" in caplog.text and "; dropped" in caplog.text


def test_a_failing_handler_costs_only_its_request(short_dir, caplog):
    rec = Recorder(reply=RuntimeError("handler bug"))

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            reader, writer = await connect(srv.path)
            writer.write(shimwire.encode_request(REQ))
            dropped = await closed_without_answer(reader)
            rec.reply = HookReply()
            reader, writer = await connect(srv.path)
            writer.write(shimwire.encode_request(REQ))
            reply = await read_reply(reader)
            writer.close()
            return dropped, reply, srv.served
    with caplog.at_level(logging.ERROR, logger=LOG):
        dropped, reply, served = run(go())
    assert dropped and reply == HookReply() and served == 1
    assert "failed: RuntimeError: handler bug; connection closed without an answer" in caplog.text


def test_a_client_that_sends_nothing_is_dropped_after_the_read_timeout(short_dir, monkeypatch, caplog):
    monkeypatch.setattr(servermod, "READ_TIMEOUT_S", 0.2)
    rec = Recorder()

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            reader, writer = await connect(srv.path)
            writer.write(b"HOOKD1 prep")                # part of a header, then silence
            dropped = await closed_without_answer(reader)
            writer.close()
            return dropped, srv.in_flight
    with caplog.at_level(logging.WARNING, logger=LOG):
        dropped, in_flight = run(go())
    assert dropped and in_flight == 0
    assert "sent no complete request in 0 s; dropped" in caplog.text


def test_a_client_closing_at_once_is_not_a_bad_message(short_dir, caplog):
    rec = Recorder()

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            reader, writer = await connect(srv.path)
            writer.write_eof()
            dropped = await closed_without_answer(reader)
            writer.close()
            return dropped
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert run(go())
    assert caplog.records == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a peer with another uid)")
def test_a_non_root_peer_is_refused(short_dir, caplog):
    """The socket's mode is opened up here so that only SO_PEERCRED stands in the way."""
    rec = Recorder()
    os.chmod(short_dir, 0o755)
    client = "\n".join([
        "import socket, sys",
        "s = socket.socket(socket.AF_UNIX)",
        "s.settimeout(5)",
        "s.connect(sys.argv[1])",
        "try:",
        "    s.sendall(sys.stdin.buffer.read())",
        "    data = s.recv(100)",
        "except (BrokenPipeError, ConnectionResetError):",     # refused before it sent it all
        "    data = b''",
        "print(repr(data))"])

    async def go():
        async with serving(short_dir / "h.sock", rec) as srv:
            os.chmod(srv.path, 0o666)
            proc = await asyncio.create_subprocess_exec(
                "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                sys.executable, "-c", client, srv.path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=hookd_env())
            out, _ = await asyncio.wait_for(proc.communicate(shimwire.encode_request(REQ)), 10)
            return out, srv.refused, srv.served
    with caplog.at_level(logging.WARNING, logger=LOG):
        out, refused, served = run(go())
    assert out.strip() == b"b''"                        # closed, no answer
    assert (refused, served) == (1, 0) and rec.hooks == []
    assert "uid 65534 gid 65534: only root may use it" in caplog.text


# ------------------------------------------------------------------ stopping
def test_drain_waits_for_a_request_in_flight(short_dir):
    entered, release = None, None
    rec = Recorder()

    async def slow_dispatch(msg):
        entered.set()
        await release.wait()
        return {"v": 1, "late": True}

    async def go():
        nonlocal entered, release
        entered, release = asyncio.Event(), asyncio.Event()
        srv = HookServer(str(short_dir / "h.sock"), slow_dispatch, rec.hook)
        await srv.start()
        reader, writer = await connect(srv.path)
        writer.write(wire.encode({"v": 1, "op": "status"}))
        await asyncio.wait_for(entered.wait(), 5)
        srv.stop_accepting()
        assert not (short_dir / "h.sock").exists()           # hookd made it: unlinked
        with pytest.raises(OSError):
            await connect(srv.path)                          # no new clients
        drain = asyncio.ensure_future(srv.drain(10))
        for _ in range(5):
            await asyncio.sleep(0)                           # let drain run: it must keep waiting
        waited = not drain.done() and srv.in_flight == 1
        release.set()
        answer = await asyncio.wait_for(wire.read_message(reader), 5)
        # The connection stays the server's until the client closes it (a shim does after
        # its one answer; an idle one would be dropped after READ_TIMEOUT_S).
        writer.close()
        await asyncio.wait_for(drain, 5)
        return waited, answer, srv.in_flight
    waited, answer, in_flight = run(go())
    assert waited and answer == {"v": 1, "late": True} and in_flight == 0


def test_drain_is_bounded(short_dir):
    rec = Recorder()

    async def go():
        entered, release = asyncio.Event(), asyncio.Event()

        async def stuck(msg):
            entered.set()
            await release.wait()
            return {}
        srv = HookServer(str(short_dir / "h.sock"), stuck, rec.hook)
        await srv.start()
        reader, writer = await connect(srv.path)
        writer.write(wire.encode({"v": 1, "op": "status"}))
        await asyncio.wait_for(entered.wait(), 5)
        srv.stop_accepting()
        await srv.drain(0.05)                     # returns with the request still in flight
        left = srv.in_flight
        release.set()
        writer.close()
        await srv.drain(5)
        return left, srv.in_flight
    assert run(go()) == (1, 0)


def test_an_inherited_socket_is_served_and_its_file_left_in_place(short_dir):
    rec = Recorder()
    path = short_dir / "inherited.sock"
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(path))
    held.listen()
    fd = os.dup(held.fileno())

    async def go():
        srv = HookServer("/nonexistent/configured.sock", rec.dispatch, rec.hook, listen_fd=fd)
        await srv.start()
        reader, writer = await connect(path)
        writer.write(shimwire.encode_request(REQ))
        reply = await read_reply(reader)
        writer.close()
        srv.stop_accepting()
        await srv.drain(5)
        return reply
    try:
        assert run(go()) == HookReply()
        assert path.exists()                      # systemd's socket: never unlinked
    finally:
        held.close()
