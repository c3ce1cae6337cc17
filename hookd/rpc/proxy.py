"""The libvirt-protocol proxy: a UNIX socket in front of libvirtd that rewrites domain XML.

libvirt gives hooks no way to change the XML of a starting guest, so hookd
serves libvirt's own RPC protocol on a socket of its own; nova-compute connects
to ``qemu+unix:///system?socket=<listen_path>`` and every domain definition
that passes through is handed to hookd's policy callback.

This module owns: the wiring -- the listening socket (created or inherited,
through hookd.ipc.listener), accepting, peer admission (root or the allowed
group, hookd.ipc.listener.admit), the client limit, one upstream connection per
admitted client (the upstream path may be chosen per connection), the sessions
that are open, and the ``stats`` counters; each session is a
hookd.rpc.relay.Session whose client->libvirtd messages pass through one
hookd.rpc.intercept.Interceptor.

It must not do: relaying bytes or descriptors (hookd.rpc.relay), decoding or
rewriting calls (hookd.rpc.intercept), policy (the ``rewrite`` callback
decides), audit (the callback records it), framing or XDR details
(hookd.rpc.frame, hookd.rpc.xdr), threads. It never breaks a definition it does
not understand: on any decode or rewrite failure the original bytes are
forwarded untouched and ``on_error`` is called.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable

from hookd.errors import HookdError
from hookd.ipc.listener import adopt_listener, admit, create_unix_listener, file_identity, unlink_if_same
from hookd.rpc.frame import MESSAGE_MAX
from hookd.rpc.intercept import ErrorFn, Interceptor, RewriteFn
from hookd.rpc.relay import Session, read_buffer

#: Accepts per readiness callback, so a connection storm cannot starve relays.
ACCEPT_BATCH = 32
#: At most one "over proxy_max_clients" log line per this many seconds.
OVER_LIMIT_LOG_S = 10.0
#: How long to stop accepting after accept() failed (e.g. out of descriptors).
ACCEPT_PAUSE = 0.5
LISTEN_BACKLOG = 128
SOCKET_MODE = 0o660


class LibvirtProxy:
    """A libvirt RPC socket in front of libvirtd that rewrites domain definitions.

    ``stats`` keys: clients_connected (sessions open now), clients_total
    (connections accepted, admitted or not), clients_refused (failed the
    peer-credential check), definitions_seen (XML handed to ``rewrite``),
    definitions_rewritten (forwarded changed), errors (``on_error`` calls),
    protocol_errors (sessions dropped for malformed traffic), upstream_failures
    (clients closed because libvirtd could not be reached), clients_over_limit
    (connections closed at once because ``max_clients`` sessions were open),
    upstream_up (1 after a connection to libvirtd succeeded, 0 after one failed, None
    before the first: the metrics' hookd_proxy_upstream_up; no probing of our own).
    """

    def __init__(self, *, listen_path: str | None, upstream_path: "str | Callable[[], str]",
                 rewrite: RewriteFn, on_error: ErrorFn, allowed_gid: int | None,
                 listen_fd: int | None = None, max_message: int = MESSAGE_MAX,
                 connect_timeout: float = 2.0, max_clients: int = 256,
                 log: logging.Logger | None = None):
        if listen_path is None and listen_fd is None:
            raise HookdError("LibvirtProxy needs listen_path or listen_fd")
        self.listen_path = listen_path
        #: A path, or a function giving one (hookd.rpc.upstream's `auto`, chosen per connection).
        self._upstream_path = upstream_path
        self.max_message = max_message
        self.connect_timeout = connect_timeout
        self.max_clients = max_clients
        self.allowed_gid = allowed_gid
        self._over_limit_logged = 0.0     # monotonic time of the last "over the limit" line
        self._over_limit_unlogged = 0
        self._listen_fd = listen_fd
        self._log = log or logging.getLogger("hookd.rpc.proxy")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lsock: socket.socket | None = None
        self._created: tuple[str, tuple[int, int]] | None = None  # (path, file identity) to unlink at close
        self._sessions: set[Session] = set()
        self._connecting: set[asyncio.Task] = set()
        self._counter = 0
        self._closing = False
        self._rview = read_buffer()  # shared by every session's reads
        self.stats = {
            "clients_connected": 0,
            "clients_total": 0,
            "clients_refused": 0,
            "definitions_seen": 0,
            "definitions_rewritten": 0,
            "errors": 0,
            "protocol_errors": 0,
            "upstream_failures": 0,
            "clients_over_limit": 0,
            "upstream_up": None,
        }
        self._interceptor = Interceptor(rewrite, on_error, max_message=max_message,
                                        stats=self.stats, log=self._log)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._listen_fd is not None:
            # An inherited (socket-activated) socket: its file belongs to whoever passed it.
            # close() never unlinks it, and the proxy drives accept() itself rather than
            # through asyncio's create_unix_server(), whose cleanup_socket (Python >= 3.13)
            # would unlink it (issue #17).
            sock = adopt_listener(self._listen_fd, "proxy")
            where = f"{self.listen_path or 'fd %d' % self._listen_fd} (inherited fd {self._listen_fd})"
        else:
            sock = self._bind(self.listen_path)
            where = self.listen_path
        sock.setblocking(False)
        self._lsock = sock
        self._loop.add_reader(sock.fileno(), self._on_accept)
        self._log.info("libvirt proxy listening on %s, upstream %s", where, self.upstream_path)

    def _bind(self, path: str) -> socket.socket:
        sock = create_unix_listener(path, SOCKET_MODE, self.allowed_gid, LISTEN_BACKLOG,
                                    what="proxy", logger=self._log)
        try:
            self._created = (path, file_identity(path))
        except OSError as err:
            sock.close()
            raise HookdError(f"cannot create proxy socket {path}: {err}") from err
        return sock

    async def close(self) -> None:
        self._closing = True
        if self._lsock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._lsock.fileno())
            self._lsock.close()
            self._lsock = None
        for task in list(self._connecting):
            task.cancel()
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)
        for session in list(self._sessions):
            session.close("proxy closing")
        if self._created is not None:
            path, identity = self._created
            self._created = None
            unlink_if_same(path, identity)
        self._log.info("libvirt proxy closed")

    # ------------------------------------------------------------------ accepting
    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._lsock is None:
                return
            try:
                conn, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                # EMFILE and friends: the socket stays readable, so pause
                # accepting instead of spinning; established sessions go on.
                self._log.error("accept failed, pausing accepts for %.1fs: %s", ACCEPT_PAUSE, err)
                self._loop.remove_reader(self._lsock.fileno())
                self._loop.call_later(ACCEPT_PAUSE, self._resume_accept)
                return
            self.stats["clients_total"] += 1
            conn.setblocking(False)
            admission = admit(conn, (0,), self.allowed_gid)
            peer = admission.who
            if not admission.allowed:
                self.stats["clients_refused"] += 1
                self._log.warning("refused client %s: %s", peer, admission.reason)
                conn.close()
                continue
            if len(self._sessions) + len(self._connecting) >= self.max_clients:
                # Like libvirtd's max_clients: a client that leaks connections must not
                # take the descriptors hookd needs for the hook socket and the others.
                self.stats["clients_over_limit"] += 1
                self._refused_over_limit(peer)
                conn.close()
                continue
            task = self._loop.create_task(self._connect_upstream(conn, peer))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _refused_over_limit(self, peer: str) -> None:
        """One log line per OVER_LIMIT_LOG_S at most: a flood must not flood the journal too."""
        now = time.monotonic()
        if now - self._over_limit_logged < OVER_LIMIT_LOG_S:
            self._over_limit_unlogged += 1
            return
        more = f" ({self._over_limit_unlogged} more refused since the last line)" if self._over_limit_unlogged else ""
        self._log.warning("refused client %s: %d clients connected, the [hookd] proxy_max_clients limit; "
                          "connected clients go on%s", peer, self.max_clients, more)
        self._over_limit_logged, self._over_limit_unlogged = now, 0

    def _resume_accept(self) -> None:
        if self._lsock is not None and not self._closing:
            self._loop.add_reader(self._lsock.fileno(), self._on_accept)

    @property
    def upstream_path(self) -> str:
        p = self._upstream_path
        return p() if callable(p) else p

    async def _connect_upstream(self, conn: socket.socket, peer: str) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.setblocking(False)
        adopted = False
        path = self.upstream_path
        try:
            try:
                await asyncio.wait_for(self._loop.sock_connect(upstream, path), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as err:
                self.stats["upstream_failures"] += 1
                self.stats["upstream_up"] = 0
                self._log.warning("closing client %s: upstream %s unreachable: %s",
                                  peer, path, err or "timeout")
                return
            self.stats["upstream_up"] = 1
            if self._closing:
                return
            self._counter += 1
            session = Session(self._loop, self._counter, conn, upstream, peer,
                              intercept=self._interceptor, on_closed=self._session_closed,
                              stats=self.stats, log=self._log, max_message=self.max_message,
                              rview=self._rview)
            self._sessions.add(session)
            self.stats["clients_connected"] += 1
            adopted = True
            self._log.debug("session #%d opened for %s", session.number, peer)
            session.start()
        finally:
            if not adopted:
                upstream.close()
                conn.close()

    def _session_closed(self, session: Session, reason: str) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            self.stats["clients_connected"] -= 1
        self._log.debug("session #%d closed: %s", session.number, reason)
