"""The libvirt-protocol proxy: a UNIX socket in front of libvirtd that rewrites domain XML.

libvirt gives hooks no way to change the XML of a starting guest, so hookd
serves libvirt's own RPC protocol on a socket of its own; nova-compute connects
to ``qemu+unix:///system?socket=<listen_path>`` and every domain definition
that passes through is handed to hookd's policy callback.

This module owns: the listening socket (created or inherited, and the
peer-credential check, through hookd.ipc.listener), one upstream connection per admitted client, the byte-for-byte relay in
both directions (replies, events, keepalives, streams, errors, and the file
descriptors that WITH_FDS messages pass with SCM_RIGHTS), bounded buffering with
backpressure, and the interception of the client->libvirtd calls listed in
hookd.rpc.xdr.CODECS.

It must not do: policy (the ``rewrite`` callback decides), audit (the callback
records it), framing or XDR details (hookd.rpc.frame, hookd.rpc.xdr), threads.
It never breaks a definition it does not understand: on any decode or rewrite
failure the original bytes are forwarded untouched and ``on_error`` is called.

Everything runs on one asyncio event loop with non-blocking sockets driven by
``loop.add_reader``/``add_writer`` and ``recvmsg``/``sendmsg``, because asyncio
streams cannot carry file descriptors.
"""

from __future__ import annotations

import array
import asyncio
import collections
import logging
import os
import socket
import time
from typing import Callable

from hookd.errors import HookdError
from hookd.ipc.listener import adopt_listener, admit, create_unix_listener, file_identity, unlink_if_same
from hookd.rpc.frame import (
    CALL_TYPES,
    MESSAGE_MAX,
    NUM_FDS_MAX,
    REMOTE_PROGRAM,
    Frame,
    FrameDecoder,
    FrameError,
)
from hookd.rpc.xdr import CODECS, XdrError

#: Bytes asked of the kernel per recvmsg.
READ_CHUNK = 256 * 1024
#: Queued bytes toward one side above which we stop reading the other side...
HIGH_WATER = 1024 * 1024
#: ...and below which we read again.
LOW_WATER = 256 * 1024
#: Buffers per sendmsg (well under IOV_MAX = 1024).
MAX_IOV = 64
#: Room for the descriptors of one recvmsg. libvirt sends one per one-byte
#: write, but a hostile peer may send more; anything beyond is MSG_CTRUNC.
_CMSG_SPACE = socket.CMSG_SPACE(NUM_FDS_MAX * array.array("i").itemsize)
#: After one side reached EOF, how long queued bytes may take to drain to the
#: other side before the session is closed anyway.
FLUSH_TIMEOUT = 5.0
#: Accepts per readiness callback, so a connection storm cannot starve relays.
ACCEPT_BATCH = 32
#: At most one "over proxy_max_clients" log line per this many seconds.
OVER_LIMIT_LOG_S = 10.0
#: How long to stop accepting after accept() failed (e.g. out of descriptors).
ACCEPT_PAUSE = 0.5
LISTEN_BACKLOG = 128
SOCKET_MODE = 0o660
# Plain ints: IntFlag arithmetic costs microseconds on every read.
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)

RewriteFn = Callable[[str, str], "str | None"]
ErrorFn = Callable[[str, str, BaseException], None]


class _FdItem:
    """One descriptor-carrier byte and the descriptor that goes with it."""

    __slots__ = ("byte", "fd")

    def __init__(self, byte: bytes, fd: int):
        self.byte = byte
        self.fd = fd

    def __len__(self) -> int:
        return 1


class _SessionClosed(Exception):
    """Internal: the session is gone; unwind the current callback."""


class _Pipe:
    """One direction of a session: read messages from ``src``, write them to ``dst``."""

    def __init__(self, session: "_Session", name: str, src: socket.socket, dst: socket.socket,
                 intercept: bool, max_message: int):
        self.session = session
        self.name = name
        self.src = src
        self.dst = dst
        self.intercept = intercept
        self.decoder = FrameDecoder(max_message)
        self.max_message = max_message
        self.rview = session.proxy._rview  # shared: the decoder copies what it keeps
        self.rbufs = [self.rview]
        self.fds: collections.deque[tuple[int, int]] = collections.deque()  # (stream offset tag, fd)
        self.out: collections.deque = collections.deque()  # bytes | memoryview | _FdItem
        self.out_bytes = 0
        self.reading = False
        self.writing = False
        self.src_eof = False  # src sent EOF
        self.halted = False  # never read src again (src or dst is gone)

    # -- reading ---------------------------------------------------------------------
    def start_reading(self) -> None:
        if not self.reading and not self.halted:
            self.session.loop.add_reader(self.src.fileno(), self.on_readable)
            self.reading = True

    def stop_reading(self) -> None:
        if self.reading:
            self.session.loop.remove_reader(self.src.fileno())
            self.reading = False

    def on_readable(self) -> None:
        try:
            self._read_once()
        except _SessionClosed:
            pass

    def _read_once(self) -> None:
        session = self.session
        try:
            nbytes, ancdata, flags, _ = self.src.recvmsg_into(self.rbufs, _CMSG_SPACE, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            session.close(f"{self.name}: read failed: {err}")
            raise _SessionClosed from err
        if ancdata:
            self._take_fds(ancdata, self.decoder.received + nbytes)
        if flags & _MSG_CTRUNC:
            session.protocol_error(self.name, FrameError("descriptors truncated (MSG_CTRUNC)"))
        if nbytes == 0:
            self._on_eof()
            return
        try:
            frames = self.decoder.feed(self.rview[:nbytes])
        except FrameError as err:
            session.protocol_error(self.name, err)
        for frame in frames:
            self._forward(frame)
        # Descriptors that came with bytes of a message that does not carry
        # descriptors would otherwise be passed along with the wrong message.
        if self.fds:
            if self.fds[0][0] <= self.decoder.offset:
                session.protocol_error(self.name, FrameError("descriptor received outside a WITH_FDS message"))
            if len(self.fds) > NUM_FDS_MAX:
                session.protocol_error(self.name, FrameError(f"more than {NUM_FDS_MAX} descriptors pending"))
        if self.out:
            self.flush()
            if self.out_bytes > HIGH_WATER:
                self.stop_reading()

    def _take_fds(self, ancdata, tag: int) -> None:
        """Remember received descriptors with the stream offset of the chunk's end.

        Linux ends a recvmsg right after the one-byte write that carried
        descriptors, so the chunk's end is that carrier byte's position.
        """
        for level, ctype, data in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self.fds.extend((tag, fd) for fd in fds)

    def _on_eof(self) -> None:
        self.stop_reading()
        self.src_eof = True
        self.halted = True
        try:
            self.decoder.eof()
        except FrameError as err:
            self.session.protocol_error(self.name, err)
        if self.fds:
            self.session.protocol_error(self.name, FrameError("descriptors received without a message"))
        self.session.peer_eof(self)

    def _forward(self, frame: Frame) -> None:
        raw = frame.raw
        header = frame.header
        if (self.intercept and header.program == REMOTE_PROGRAM and header.procedure in CODECS
                and header.type in CALL_TYPES):
            raw = self.session.proxy._intercept(frame, self.session)
        self.out.append(raw)
        self.out_bytes += len(raw)
        if frame.nfds:
            start, end = frame.carrier_offset, frame.end_offset
            fds = []
            stray = False
            while self.fds and self.fds[0][0] <= end:
                tag, fd = self.fds.popleft()
                stray = stray or tag <= start
                fds.append(fd)
            if stray or len(fds) != frame.nfds:
                for fd in fds:
                    os.close(fd)
                self.session.protocol_error(self.name, FrameError(
                    f"message announced {frame.nfds} descriptors, {len(fds)} arrived with its "
                    f"carrier bytes{' (some with other bytes)' if stray else ''}"))
            for i, fd in enumerate(fds):
                self._enqueue(_FdItem(frame.fd_carrier[i:i + 1], fd))

    # -- writing ---------------------------------------------------------------------
    def _enqueue(self, item) -> None:
        self.out.append(item)
        self.out_bytes += len(item)

    def flush(self) -> None:
        """Write as much queued data as the destination takes now."""
        session = self.session
        out = self.out
        try:
            while out:
                head = out[0]
                if head.__class__ is _FdItem:
                    # Exactly libvirt's framing: one byte per descriptor, one
                    # descriptor per sendmsg (gnulib recvfd expects exactly one).
                    self.dst.sendmsg([head.byte], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", [head.fd]))])
                    out.popleft()
                    os.close(head.fd)
                    self.out_bytes -= 1
                    continue
                if len(out) == 1:
                    sent = self.dst.send(head)
                else:
                    bufs = []
                    for item in out:
                        if item.__class__ is _FdItem or len(bufs) >= MAX_IOV:
                            break
                        bufs.append(item)
                    sent = self.dst.sendmsg(bufs)
                self.out_bytes -= sent
                while sent:
                    item = out[0]
                    if sent >= len(item):
                        sent -= len(item)
                        out.popleft()
                    else:
                        out[0] = memoryview(item)[sent:]
                        sent = 0
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as err:
            session.close(f"{self.name}: write failed: {err}")
            raise _SessionClosed from err
        if out and not self.writing:
            session.loop.add_writer(self.dst.fileno(), self.on_writable)
            self.writing = True
        elif not out and self.writing:
            session.loop.remove_writer(self.dst.fileno())
            self.writing = False
        if self.out_bytes <= LOW_WATER and not self.reading:
            self.start_reading()
        if not out and self.src_eof:
            session.drained(self)

    def on_writable(self) -> None:
        try:
            self.flush()
        except _SessionClosed:
            pass

    def discard(self) -> None:
        """Close every descriptor still held (queued or unassigned)."""
        for _, fd in self.fds:
            os.close(fd)
        self.fds.clear()
        for item in self.out:
            if isinstance(item, _FdItem):
                os.close(item.fd)
        self.out.clear()
        self.out_bytes = 0


class _Session:
    """One admitted client and its own upstream connection."""

    def __init__(self, proxy: "LibvirtProxy", number: int, client: socket.socket,
                 upstream: socket.socket, peer: str):
        self.proxy = proxy
        self.loop = proxy._loop
        self.number = number
        self.peer = peer
        self.client = client
        self.upstream = upstream
        self.closed = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self.c2u = _Pipe(self, f"client#{number}->upstream", client, upstream, True, proxy.max_message)
        self.u2c = _Pipe(self, f"upstream->client#{number}", upstream, client, False, proxy.max_message)

    def start(self) -> None:
        self.c2u.start_reading()
        self.u2c.start_reading()

    def protocol_error(self, where: str, err: FrameError) -> None:
        self.proxy._log.warning("dropping session #%d (%s): %s: %s", self.number, self.peer, where, err)
        self.proxy._log.debug("offending bytes: %r", err.raw[:256])
        self.proxy.stats["protocol_errors"] += 1
        self.close(f"{where}: {err}")
        raise _SessionClosed

    def peer_eof(self, pipe: _Pipe) -> None:
        """``pipe.src`` closed: deliver what it already sent, then end the session."""
        self.proxy._log.debug("session #%d: %s reached EOF", self.number, pipe.name)
        # Nothing the other side says can reach the side that left, and
        # libvirt clients reconnect on their own: stop listening to it.
        other = self.u2c if pipe is self.c2u else self.c2u
        other.halted = True
        other.stop_reading()
        if not pipe.out:
            self.close(f"{pipe.name}: EOF")
            raise _SessionClosed
        self._flush_timer = self.loop.call_later(
            FLUSH_TIMEOUT, self.close, f"{pipe.name}: EOF, flush timed out")

    def drained(self, pipe: _Pipe) -> None:
        """Everything ``pipe`` queued after its source's EOF was written."""
        self.close(f"{pipe.name}: EOF")
        raise _SessionClosed

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        for pipe in (self.c2u, self.u2c):
            pipe.stop_reading()
            if pipe.writing:
                self.loop.remove_writer(pipe.dst.fileno())
                pipe.writing = False
            pipe.discard()
        self.client.close()
        self.upstream.close()
        self.proxy._session_closed(self, reason)


class LibvirtProxy:
    """A libvirt RPC socket in front of libvirtd that rewrites domain definitions.

    ``stats`` keys: clients_connected (sessions open now), clients_total
    (connections accepted, admitted or not), clients_refused (failed the
    peer-credential check), definitions_seen (XML handed to ``rewrite``),
    definitions_rewritten (forwarded changed), errors (``on_error`` calls),
    protocol_errors (sessions dropped for malformed traffic), upstream_failures
    (clients closed because libvirtd could not be reached), clients_over_limit
    (connections closed at once because ``max_clients`` sessions were open).
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
        self._rewrite = rewrite
        self._on_error = on_error
        self._listen_fd = listen_fd
        self._log = log or logging.getLogger("hookd.rpc.proxy")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lsock: socket.socket | None = None
        self._created: tuple[str, tuple[int, int]] | None = None  # (path, file identity) to unlink at close
        self._sessions: set[_Session] = set()
        self._connecting: set[asyncio.Task] = set()
        self._counter = 0
        self._closing = False
        self._rview = memoryview(bytearray(READ_CHUNK))
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
        }

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
                self._log.warning("closing client %s: upstream %s unreachable: %s",
                                  peer, path, err or "timeout")
                return
            if self._closing:
                return
            self._counter += 1
            session = _Session(self, self._counter, conn, upstream, peer)
            self._sessions.add(session)
            self.stats["clients_connected"] += 1
            adopted = True
            self._log.debug("session #%d opened for %s", session.number, peer)
            session.start()
        finally:
            if not adopted:
                upstream.close()
                conn.close()

    def _session_closed(self, session: _Session, reason: str) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            self.stats["clients_connected"] -= 1
        self._log.debug("session #%d closed: %s", session.number, reason)

    # ------------------------------------------------------------------ interception
    def _intercept(self, frame: Frame, session: _Session) -> bytes:
        """The bytes to forward for an intercepted call: rewritten, or the original."""
        codec = CODECS[frame.header.procedure]
        op = codec.op
        try:
            args = codec.decode(frame.payload)
            xml = codec.get_xml(args)
        except XdrError as err:
            self._report(op, "", err, session)
            return frame.raw
        if xml is None:  # a migration call without persistent_xml
            return frame.raw
        self.stats["definitions_seen"] += 1
        try:
            new_xml = self._rewrite(op, xml)
        except Exception as err:  # the policy's failure must never break the call
            self._report(op, xml, err, session)
            return frame.raw
        if new_xml is None or new_xml == xml:
            return frame.raw
        try:
            payload = codec.encode(codec.set_xml(args, new_xml))
            raw = frame.with_payload(payload, self.max_message).raw
        except (XdrError, FrameError) as err:
            self._report(op, xml, err, session)
            return frame.raw
        self.stats["definitions_rewritten"] += 1
        return raw

    def _report(self, op: str, xml: str, err: BaseException, session: _Session) -> None:
        self.stats["errors"] += 1
        self._log.error("session #%d: %s call forwarded unchanged: %s: %s",
                        session.number, op, type(err).__name__, err)
        self._log.debug("traceback of the %s failure", op, exc_info=err)
        try:
            self._on_error(op, xml, err)
        except Exception as cb_err:
            self._log.error("on_error callback failed: %s: %s", type(cb_err).__name__, cb_err)
            self._log.debug("traceback of the on_error failure", exc_info=cb_err)

