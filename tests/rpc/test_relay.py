"""hookd.rpc.relay over socketpairs: a Session between a stand-in client and a stand-in
libvirtd, on a real event loop. Waiting is on events or bounded conditions, never a sleep."""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket

import pytest

from hookd.rpc import relay
from hookd.rpc.frame import MESSAGE_MAX, REMOTE_PROGRAM, Header, MessageType, Status, encode
from hookd.rpc.relay import HIGH_WATER, Session, State, read_buffer

LOG = logging.getLogger("test.relay")


def message(serial: int, payload: bytes = b"", mtype=MessageType.CALL, procedure: int = 1,
            nfds: int = 0) -> bytes:
    return encode(Header(REMOTE_PROGRAM, 1, procedure, mtype, serial, Status.OK), payload, nfds=nfds)


async def until(cond, what: str, timeout: float = 10.0):
    """Let the loop run until cond() is true (bounded): the relay's callbacks run meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)
    return True


async def readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await asyncio.wait_for(fut, 10)
    finally:
        loop.remove_reader(sock.fileno())


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(got)), 10)
        if not chunk:
            raise AssertionError(f"EOF after {len(got)} of {n} bytes")
        got += chunk
    return bytes(got)


async def recv_eof(sock: socket.socket) -> bool:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1), 10) == b""


class Pair:
    """client_app <-> [Session] <-> upstream_app, all non-blocking."""

    def __init__(self, intercept=None):
        self.client_app, client = socket.socketpair()
        upstream, self.upstream_app = socket.socketpair()
        for s in (self.client_app, client, upstream, self.upstream_app):
            s.setblocking(False)
        self.stats = {"protocol_errors": 0}
        self.reasons: list[str] = []
        self.closed = asyncio.Event()
        self.session = Session(asyncio.get_running_loop(), 1, client, upstream, "test-peer",
                               intercept=intercept, on_closed=self._closed, stats=self.stats, log=LOG,
                               max_message=MESSAGE_MAX, rview=read_buffer())

    def _closed(self, session, reason):
        assert session is self.session
        self.reasons.append(reason)
        self.closed.set()

    async def wait_closed(self):
        await asyncio.wait_for(self.closed.wait(), 10)

    def close(self):
        self.session.close("test over")
        self.client_app.close()
        self.upstream_app.close()


def run(coro):
    asyncio.run(coro)


def test_messages_are_relayed_both_ways_byte_for_byte():
    async def main():
        p = Pair()
        assert p.session.state is State.NEW
        p.session.start()
        assert p.session.state is State.RELAYING
        calls = message(1, b"abcd") + message(2, b"efgh" * 100)
        third = message(3, b"x" * 1000)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(p.client_app, calls + third[:10])    # a message cut in two
        assert await recv_exactly(p.upstream_app, len(calls)) == calls
        await loop.sock_sendall(p.client_app, third[10:])
        assert await recv_exactly(p.upstream_app, len(third)) == third
        reply = message(3, b"reply", mtype=MessageType.REPLY)
        await loop.sock_sendall(p.upstream_app, reply)
        assert await recv_exactly(p.client_app, len(reply)) == reply
        assert p.session.state is State.RELAYING and p.reasons == []
        p.close()
        assert p.session.state is State.CLOSED and p.reasons == ["test over"]
    run(main())


def test_intercept_replaces_client_messages_only():
    seen = []
    replacement = message(1, b"REWRITTEN")

    def intercept(frame, number):
        seen.append((frame.header.serial, number))
        return replacement

    async def main():
        p = Pair(intercept)
        p.session.start()
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(p.client_app, message(1, b"original"))
        assert await recv_exactly(p.upstream_app, len(replacement)) == replacement
        reply = message(1, b"answer", mtype=MessageType.REPLY)
        await loop.sock_sendall(p.upstream_app, reply)
        assert await recv_exactly(p.client_app, len(reply)) == reply
        assert seen == [(1, 1)]          # the reply did not go through intercept
        p.close()
    run(main())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))      # (each count includes listdir's own descriptor)


def test_a_descriptor_is_passed_with_its_carrier_byte_and_not_kept():
    async def main():
        p = Pair()
        p.session.start()
        r, w = os.pipe()
        msg = message(5, b"\0\0\0\0", mtype=MessageType.CALL_WITH_FDS, procedure=309, nfds=1)
        before = _open_fds()
        p.client_app.setblocking(True)
        p.client_app.sendall(msg)
        p.client_app.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        p.client_app.setblocking(False)
        assert await recv_exactly(p.upstream_app, len(msg)) == msg
        await readable(p.upstream_app)
        data, anc, _, _ = p.upstream_app.recvmsg(16, socket.CMSG_SPACE(4 * 4))
        assert data == b"\0"
        [(level, kind, fdbytes)] = anc
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        [passed] = array.array("i", fdbytes)
        try:
            os.write(passed, b"through the proxy")        # the very pipe we sent
            assert os.read(r, 100) == b"through the proxy"
            # The relay closed its own copy: only the received descriptor is new.
            assert _open_fds() == before + 1
        finally:
            for fd in (passed, r, w):
                os.close(fd)
        p.close()
    run(main())


def test_malformed_traffic_drops_the_session_and_closes_both_sides():
    async def main():
        p = Pair()
        p.session.start()
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(p.client_app, b"\0\0\0\x05garbage")   # a length word below the minimum
        await p.wait_closed()
        assert p.session.state is State.CLOSED
        assert p.stats["protocol_errors"] == 1
        [reason] = p.reasons
        assert reason.startswith("client#1->upstream: ") and "length word 5" in reason
        assert await recv_eof(p.client_app) and await recv_eof(p.upstream_app)
        p.close()
        assert p.reasons == [reason]                 # on_closed exactly once
    run(main())


def test_client_eof_delivers_what_it_sent_then_closes():
    async def main():
        p = Pair()
        p.session.start()
        loop = asyncio.get_running_loop()
        msg = message(9, b"last words")
        await loop.sock_sendall(p.client_app, msg)
        p.client_app.shutdown(socket.SHUT_WR)
        assert await recv_exactly(p.upstream_app, len(msg)) == msg
        await p.wait_closed()
        assert p.reasons == ["client#1->upstream: EOF"] and p.session.state is State.CLOSED
        assert await recv_eof(p.upstream_app)
        p.close()
    run(main())


def test_closing_drains_queued_bytes_to_a_slow_reader_then_closes():
    async def main():
        p = Pair()
        p.session.start()
        loop = asyncio.get_running_loop()
        # More than the socketpair buffers hold, less than HIGH_WATER: some stays queued.
        data = b"".join(message(i, bytes([i]) * 60000, mtype=MessageType.STREAM) for i in range(10))
        assert len(data) < HIGH_WATER
        await loop.sock_sendall(p.client_app, data)
        p.client_app.shutdown(socket.SHUT_WR)
        c2u = p.session.c2u
        await until(lambda: p.session.state is State.CLOSING, "the session to be CLOSING")
        assert c2u.out_bytes > 0 and not p.session.u2c.reading     # the other side is not read any more
        assert p.reasons == []
        assert await recv_exactly(p.upstream_app, len(data)) == data
        await p.wait_closed()
        assert p.reasons == ["client#1->upstream: EOF"]
        assert await recv_eof(p.upstream_app)
        p.close()
    run(main())


def test_a_flush_that_does_not_finish_is_cut_off(monkeypatch):
    monkeypatch.setattr(relay, "FLUSH_TIMEOUT", 0.05)

    async def main():
        p = Pair()
        p.session.start()
        loop = asyncio.get_running_loop()
        data = b"".join(message(i, b"z" * 60000, mtype=MessageType.STREAM) for i in range(10))
        await loop.sock_sendall(p.client_app, data)
        p.client_app.shutdown(socket.SHUT_WR)
        await p.wait_closed()                        # upstream_app never reads
        assert p.reasons == ["client#1->upstream: EOF, flush timed out"]
        assert p.session.c2u.out_bytes == 0 and not p.session.c2u.writing
        p.close()
    run(main())


def test_backpressure_stops_reading_a_side_until_the_other_drains():
    async def main():
        p = Pair()
        p.session.start()
        loop = asyncio.get_running_loop()
        data = b"".join(message(i, bytes([i % 256]) * 200000, mtype=MessageType.STREAM) for i in range(20))
        sender = loop.create_task(loop.sock_sendall(p.client_app, data))   # 4 MB; upstream not reading
        c2u = p.session.c2u
        await until(lambda: not c2u.reading and c2u.out_bytes > HIGH_WATER, "reading to stop")
        assert not sender.done()                      # the client is held back, not buffered without bound
        assert c2u.out_bytes < HIGH_WATER + relay.READ_CHUNK + 1
        assert await recv_exactly(p.upstream_app, len(data)) == data
        await asyncio.wait_for(sender, 10)
        await until(lambda: c2u.reading and c2u.out_bytes == 0, "reading to resume")
        assert p.session.state is State.RELAYING
        p.close()
    run(main())


@pytest.mark.parametrize("twice", [False, True])
def test_close_releases_everything_once(twice):
    async def main():
        p = Pair()
        p.session.start()
        p.session.close("first")
        if twice:
            p.session.close("second")
        assert p.reasons == ["first"]
        assert p.session.client.fileno() == -1 and p.session.upstream.fileno() == -1
        assert not p.session.c2u.reading and not p.session.u2c.reading
        p.session.start()                              # a closed session never starts again
        assert p.session.state is State.CLOSED and not p.session.c2u.reading
        p.close()
    run(main())
