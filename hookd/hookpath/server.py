"""The hook socket: accepts the shim's and hookctl's connections, root only.

Owns the listening UNIX socket (created 0600, or inherited from systemd socket
activation), the SO_PEERCRED check on every connection, bounded reads, and the
dispatch of decoded messages: a shim request (hookd.hookpath.shimwire, told apart by its first
four bytes) to the hook handler, a JSON message (hookd.ipc.wire, hookctl's control calls)
to the daemon. It does not decide anything (see hookd.hookpath.handler) and holds no policy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import stat
import struct
import sys
from typing import Awaitable, Callable, Optional, Set

from hookd.hookpath import shimwire
from hookd.errors import HookdError, ProtocolError
from hookd.ipc.wire import HEADER, encode, read_message

log = logging.getLogger("hookd.hookpath.server")

_UCRED = struct.Struct("3i")        # struct ucred: pid, uid, gid
#: A shim sends its request at once; a peer that does not is dropped, so a stuck
#: client never holds a handler.
READ_TIMEOUT_S = 10.0


def peer_credentials(sock: socket.socket):
    """(pid, uid, gid) of the process at the other end of a UNIX socket."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


#: A hypervisor boot starts dozens of guests at once; each start's prepare hook
#: connects here. asyncio re-listens with its own backlog (default 100), so pass it.
LISTEN_BACKLOG = 1024


def create_unix_listener(path: str, mode: int, gid: Optional[int] = None,
                         backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """Bind a listening socket at `path` with `mode` from the first instant.

    The umask is applied around bind() so the socket is never, even briefly, more
    open than `mode`; a stale socket file is replaced, anything else is refused.
    """
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise HookdError(f"{path} exists and is not a socket; refusing to replace it")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as err:
        sock.close()
        raise HookdError(f"cannot bind {path}: {err.strerror}") from err
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, 0, gid)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def adopt_listener(fd: int, what: str) -> socket.socket:
    """An inherited descriptor as a non-blocking listening socket; a HookdError (one line)
    if it is not a listening UNIX stream socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise HookdError(f"inherited {what} socket (fd {fd}) is not a socket: {err.strerror}") from err
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise HookdError(f"inherited {what} socket (fd {fd}) is not a listening UNIX stream socket")
    sock.setblocking(False)
    return sock


def keep_socket_file_kwargs(loop: asyncio.AbstractEventLoop) -> dict:
    """Keyword arguments that stop asyncio from unlinking a UNIX server's socket file at close.

    Since Python 3.13 create_unix_server() (and so start_unix_server()) takes
    cleanup_socket=True by default and unlinks the socket's path when the server
    closes, also for a socket passed with sock=: for an inherited (socket-activated)
    socket that deletes systemd's socket, and clients get ENOENT until the socket unit
    is restarted (issue #17). Older versions have no such parameter and never unlink.
    """
    try:
        params = inspect.signature(loop.create_unix_server).parameters
    except (TypeError, ValueError):         # a loop whose signature cannot be read
        return {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
    return {"cleanup_socket": False} if "cleanup_socket" in params else {}


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
            sock = create_unix_listener(self.path, 0o600)
            self._created = True
        self._server = await asyncio.start_unix_server(self._client, sock=sock, backlog=LISTEN_BACKLOG, **extra)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            if uid != 0:
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
