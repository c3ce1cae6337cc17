"""One blocking client for the hook socket's shim format, for tests and benchmarks.

It sends what hooks/hookd-shim.c sends (hookd.hookpath.shimwire's request) and reads one reply,
so a test can ask hookd directly without libvirt. Tests that are about the shim itself
run the compiled shim (tests/harness/shim.py); this client is for tests about the daemon.
"""

from __future__ import annotations

import socket
import time
from typing import Optional

from hookd.hookpath import shimwire
from hookd.hookpath.shimwire import HookReply, HookRequest


def hook_request(name: str, xml, *, op: str = "prepare", sub: str = "begin", extra: str = "-",
                 deadline: Optional[float] = None) -> HookRequest:
    if isinstance(xml, str):
        xml = xml.encode()
    return HookRequest(op=op, sub=sub, domain=name, extra=extra, xml=xml, deadline=deadline)


def send_raw(sock_path, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes, half-close, and return everything hookd sends back until it closes."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def ask_hook(sock_path, request: HookRequest, timeout: float = 10) -> HookReply:
    """What hookd answers the shim for `request`; raises on no or a malformed answer."""
    reply = send_raw(sock_path, shimwire.encode_request(request), timeout)
    if not reply:
        raise ConnectionError("hookd closed the connection without an answer")
    return shimwire.decode_reply(reply)


def ask_prepare(sock_path, name: str, xml, timeout: float = 10, **kw) -> HookReply:
    return ask_hook(sock_path, hook_request(name, xml, **kw), timeout)
