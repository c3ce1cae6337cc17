"""The one blocking client of the hook socket's control protocol.

hookctl (status, reconcile), doctor and the tests ask the daemon through ask():
connect to the hook socket with a timeout, send one typed control message
(hookd.ipc.messages, hookd.ipc.wire framing), read the one reply, and return it as
the JSON object it is (a status tree, a reconcile's items, or {"error": ...}).

Owns the deadline of the whole exchange and turning every way it can fail
(unreachable, no answer in time, closed without an answer, unreadable answer)
into one ClientError with one clear line. It must not interpret the reply (its
callers do), retry, or speak the shim's binary format (hookd.hookpath.shimwire).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Union

from hookd.errors import HookdError, ProtocolError
from hookd.ipc import wire
from hookd.ipc.messages import Message

DEFAULT_TIMEOUT_S = 5.0


class ClientError(HookdError):
    """The daemon could not be asked: not reachable, no answer in time, or an unreadable answer."""

    def __init__(self, reason: str, socket_path: str):
        super().__init__(reason)
        self.socket_path = socket_path


class _NoAnswer(Exception):
    """Internal: the exchange's deadline passed while waiting for the reply."""


def _recv_exactly(s: socket.socket, n: int, deadline: float, path: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _NoAnswer()
        s.settimeout(left)
        try:
            chunk = s.recv(min(n - len(buf), 1 << 20))
        except socket.timeout as err:
            raise _NoAnswer() from err
        if not chunk:
            raise ClientError(f"hookd at {path} closed the connection without answering", path)
        buf += chunk
    return bytes(buf)


def ask(socket_path: Union[str, "os.PathLike[str]"], message: Message,
        timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """Send `message` to the daemon at `socket_path` and return its reply; the whole
    exchange takes at most `timeout` seconds. Raises ClientError."""
    path = os.fspath(socket_path)
    frame = wire.encode(message.to_dict())
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(frame)
            head = _recv_exactly(s, wire.HEADER.size, deadline, path)
            (length,) = wire.HEADER.unpack(head)
            if length > wire.MAX_MESSAGE:
                raise ClientError(f"hookd at {path} gave an unreadable answer: announced length {length} "
                                  f"is over the {wire.MAX_MESSAGE}-byte limit", path)
            body = _recv_exactly(s, length, deadline, path)
    except _NoAnswer as err:
        raise ClientError(f"hookd is not reachable at {path}: no answer within {timeout:g} s", path) from err
    except OSError as err:
        raise ClientError(f"hookd is not reachable at {path}: {err.strerror or err}", path) from err
    try:
        return wire.decode_body(body)
    except ProtocolError as err:
        raise ClientError(f"hookd at {path} gave an unreadable answer: {err}", path) from err
