"""The hook socket: accepts the shim's and hookctl's connections, root only.

Owns the hook socket's rules (created 0600 and root only, or inherited from systemd socket
activation; the binding and the SO_PEERCRED check themselves are hookd.ipc.listener's),
bounded reads, and the dispatch of decoded messages: a shim request (hookd.hookpath.shimwire, told apart by its first
four bytes) to the hook handler, a JSON message (hookd.ipc.wire, hookctl's control calls)
to the daemon. It does not decide anything (see hookd.hookpath.handler) and holds no policy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable, Optional, Set

from hookd.hookpath import shimwire
from hookd.errors import ProtocolError
from hookd.ipc.listener import LISTEN_BACKLOG, adopt_listener, admit, create_unix_listener, keep_socket_file_kwargs
from hookd.ipc.wire import HEADER, encode, read_message

log = logging.getLogger("hookd.hookpath.server")

#: A shim sends its request at once; a peer that does not is dropped, so a stuck
#: client never holds a handler.
READ_TIMEOUT_S = 10.0


class HookServer:
    def __init__(self, path: str, dispatch: Callable[[dict], Awaitable[dict]],
                 hook: Callable[[shimwire.HookRequest], shimwire.HookReply], *,
                 listen_fd: Optional[int] = None):
        self.path = path
        self._dispatch = dispatch
        self._hook = hook
        self._listen_fd = listen_fd
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: Set[asyncio.Task] = set()
        self._created = False
        self.refused = 0
        self.served = 0

    async def start(self) -> None:
        extra = {}
        if self._listen_fd is not None:
            sock = adopt_listener(self._listen_fd, "hook")
            # The socket's path belongs to whoever passed it (systemd): never unlink it.
            extra = keep_socket_file_kwargs(asyncio.get_running_loop())
        else:
            # Root only (0600), and it has always taken the path over, even from a live socket.
            sock = create_unix_listener(self.path, 0o600, what="hook", replace_live=True)
            self._created = True
        self._server = await asyncio.start_unix_server(self._client, sock=sock, backlog=LISTEN_BACKLOG, **extra)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            admission = admit(writer.get_extra_info("socket"))      # root only
            if admission.error is not None:
                raise admission.error
            pid, uid, gid = admission.peer
            if not admission.allowed:
                self.refused += 1
                log.warning("hook socket: refused connection from pid %d uid %d gid %d: only root may use it",
                            pid, uid, gid)
                return
            while True:
                try:
                    request = await asyncio.wait_for(self._read(reader), READ_TIMEOUT_S)
                except EOFError:
                    return
                except asyncio.TimeoutError:
                    log.warning("hook socket: pid %d sent no complete request in %.0f s; dropped",
                                pid, READ_TIMEOUT_S)
                    return
                except ProtocolError as err:
                    log.warning("hook socket: pid %d sent a bad message (%s); dropped", pid, err)
                    log.debug("raw bytes: %r", getattr(err, "raw", b"")[:200])
                    return
                try:
                    if isinstance(request, shimwire.HookRequest):
                        reply = shimwire.encode_reply(self._hook(request))
                    else:
                        reply = encode(await self._dispatch(request))
                except Exception as err:
                    # A handler's bug costs this request (the shim then applies its
                    # on_unreachable), never the daemon or an unlogged task exception.
                    log.error("hook socket: request from pid %d failed: %s: %s; connection closed "
                              "without an answer", pid, type(err).__name__, err)
                    log.debug("traceback of the failed request", exc_info=True)
                    return
                self.served += 1
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError) as err:
            log.debug("hook socket: client went away: %s", err)
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader):
        """One shim request (a HookRequest) or one JSON message (a dict)."""
        try:
            head = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                raise EOFError("connection closed") from err
            raise shimwire.ShimWireError("truncated message", err.partial) from err
        if head == shimwire.PREFIX:
            return await shimwire.read_request(reader, head)
        return await read_message(reader, head=head)

    def stop_accepting(self) -> None:
        """Stop accepting. A socket hookd created is unlinked; an inherited one is left
        listening in its owner's hands (systemd queues new clients until the next start)."""
        if self._server is not None:
            self._server.close()
        if self._created:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._created = False

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for in-flight requests (bounded) after stop_accepting()."""
        pending = [t for t in self._tasks if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)
