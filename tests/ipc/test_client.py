"""hookd.ipc.client against a tiny real UNIX server (a thread) in a short /tmp directory."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from hookd.errors import HookdError
from hookd.ipc import client, messages, wire


class TinyServer:
    """Accepts one connection, reads one framed request, then does `behave(conn, request)`."""

    def __init__(self, path, behave):
        self.path = str(path)
        self.behave = behave
        self.requests = []
        self.done = threading.Event()
        self.release = threading.Event()      # for behaviours that hold the connection open
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            head = conn.recv(4, socket.MSG_WAITALL)
            (n,) = wire.HEADER.unpack(head)
            body = conn.recv(n, socket.MSG_WAITALL)
            self.requests.append(head + body)
            try:
                self.behave(self, conn, wire.decode(head + body))
            except (BrokenPipeError, ConnectionResetError):
                pass        # the client gave up first: what the deadline tests want
            finally:
                self.done.set()

    def close(self):
        self.release.set()
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def serve(short_dir):
    made = []

    def start(behave):
        s = TinyServer(short_dir / "h.sock", behave)
        made.append(s)
        return s
    yield start
    for s in made:
        s.close()


def answer(obj):
    def behave(_server, conn, _request):
        conn.sendall(wire.encode(obj))
    return behave


def test_ask_sends_the_typed_message_and_returns_the_reply(serve):
    srv = serve(answer({"v": 1, "version": "x", "pid": 42}))
    assert client.ask(srv.path, messages.ReconcileQuery(dry_run=True)) == {"v": 1, "version": "x", "pid": 42}
    assert srv.requests == [wire.encode({"v": 1, "op": "reconcile", "dry_run": True})]


def test_a_reply_in_small_pieces_is_read_whole(serve):
    reply = wire.encode({"v": 1, "items": [{"domain": "d" * 300}]})

    def behave(_server, conn, _request):
        for i in range(0, len(reply), 7):
            conn.sendall(reply[i:i + 7])
    assert client.ask(serve(behave).path, messages.StatusQuery())["items"][0]["domain"] == "d" * 300


def test_unreachable_is_a_client_error(short_dir):
    with pytest.raises(client.ClientError) as exc:
        client.ask(short_dir / "none.sock", messages.StatusQuery())
    assert isinstance(exc.value, HookdError)
    assert str(exc.value).startswith(f"hookd is not reachable at {short_dir / 'none.sock'}: ")
    assert exc.value.socket_path == str(short_dir / "none.sock")


def test_no_answer_within_the_timeout_is_a_client_error(serve):
    srv = serve(lambda server, _conn, _req: server.release.wait(10))
    started = time.monotonic()
    with pytest.raises(client.ClientError, match=r"not reachable at .*: no answer within 0\.3 s"):
        client.ask(srv.path, messages.StatusQuery(), timeout=0.3)
    assert time.monotonic() - started < 3


def test_a_trickling_answer_still_ends_at_the_deadline(serve):
    """The bound is on the whole exchange, not on each recv."""
    def behave(server, conn, _request):
        conn.sendall(wire.HEADER.pack(100))
        for _ in range(100):
            if server.release.wait(0.05):
                return
            conn.sendall(b" ")
    started = time.monotonic()
    with pytest.raises(client.ClientError, match="no answer within"):
        client.ask(serve(behave).path, messages.StatusQuery(), timeout=0.5)
    assert time.monotonic() - started < 3


def test_closed_without_answering_is_a_client_error(serve):
    srv = serve(lambda *_: None)
    with pytest.raises(client.ClientError, match="closed the connection without answering"):
        client.ask(srv.path, messages.StatusQuery())


@pytest.mark.parametrize("reply,why", [
    (wire.HEADER.pack(5) + b"{nope", "undecodable message"),
    (wire.HEADER.pack(2) + b"[]", "not a JSON object"),
    (wire.HEADER.pack(wire.MAX_MESSAGE + 1), "over the"),
])
def test_an_unreadable_answer_is_a_client_error(serve, reply, why):
    srv = serve(lambda _s, conn, _r: conn.sendall(reply))
    with pytest.raises(client.ClientError, match=f"hookd at .* gave an unreadable answer: .*{why}"):
        client.ask(srv.path, messages.StatusQuery())

