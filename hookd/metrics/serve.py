"""The metrics on a UNIX socket, for a local scraper: `[metrics] socket`.

Owns answering each connection on an already listening UNIX socket (the daemon creates
it with hookd.ipc.listener: mode 0660, group [hookd] proxy_group, the people libvirt's own
read-write socket admits) with one HTTP/1.0 response holding the text format, then
closing it: `curl --unix-socket /run/hookd/metrics.sock http://localhost/metrics`. It
opens no TCP port. A client gets READ_TIMEOUT_S to send its request head and as long to
read the answer, at most MAX_CLIENTS are served at once (more are closed at once), and
nothing a client does can raise into the daemon or hold up a hook call. It renders
through the function it is given and must not import any other hookd module.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable, Optional, Set

log = logging.getLogger("hookd.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT_S = 5.0
MAX_CLIENTS = 16
#: A request head longer than this is not a scraper's.
MAX_HEAD = 8192


class MetricsServer:
    def __init__(self, sock: socket.socket, render: Callable[[], str]):
        self._sock = sock
        self._render = render
        self._server: Optional[asyncio.AbstractServer] = None
        self._clients: Set[asyncio.Task] = set()
        self.served = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, sock=self._sock, limit=MAX_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= MAX_CLIENTS:
            writer.close()
            return
        self._clients.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return      # not an HTTP client, or too slow: nothing to answer
            method = head.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                writer.write(_response(405, b"only GET\n"))
            else:
                body = self._render().encode("utf-8")
                writer.write(_response(200, body, head_only=method == b"HEAD"))
                self.served += 1
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (ConnectionError, OSError, asyncio.TimeoutError) as err:
            log.debug("metrics socket: client went away: %s", err)
        except Exception as err:
            # A bug in rendering costs this answer, never the daemon.
            log.error("metrics socket: cannot answer: %s: %s", type(err).__name__, err)
            log.debug("traceback", exc_info=True)
        finally:
            self._clients.discard(task)
            writer.close()


def _response(status: int, body: bytes, head_only: bool = False) -> bytes:
    reason = {200: "OK", 405: "Method Not Allowed"}[status]
    head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
    return head if head_only else head + body
