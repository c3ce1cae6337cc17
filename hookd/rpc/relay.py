"""The proxy's byte relay: one client connection and its upstream connection, both ways.

This module owns: reading each side with ``recvmsg`` into a shared buffer,
cutting the stream into messages (hookd.rpc.frame's decoder, which keeps every
message's exact bytes), passing each message on unchanged -- or as the
session's ``intercept`` function returns it, client->upstream only -- together
with the file descriptors that WITH_FDS messages carry with SCM_RIGHTS (one
carrier byte per descriptor, as libvirt sends them), bounded buffering with
backpressure (stop reading a side while more than HIGH_WATER bytes wait for the
other), and the session's life: NEW -> RELAYING -> CLOSING (one side left; what
it sent still drains, at most FLUSH_TIMEOUT) -> CLOSED.

It must not do: listening, accepting, admission or connecting upstream
(hookd.rpc.proxy), decoding a procedure's arguments or any policy
(hookd.rpc.intercept), framing details (hookd.rpc.frame), threads. A session
never leaks a descriptor: every one received is passed on or closed.

Everything runs on one asyncio event loop with non-blocking sockets driven by
``loop.add_reader``/``add_writer``, because asyncio streams cannot carry file
descriptors.
"""

from __future__ import annotations

import array
import asyncio
import collections
import enum
import logging
import os
import socket
from typing import Callable, Optional

from hookd.rpc.frame import NUM_FDS_MAX, Frame, FrameDecoder, FrameError

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
# Plain ints: IntFlag arithmetic costs microseconds on every read.
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)

#: ``intercept(frame, session_number)``: the bytes to forward for a client->upstream message.
InterceptFn = Callable[[Frame, int], bytes]


class State(enum.Enum):
    """Where a Session is in its life; it only ever moves forward."""

    NEW = "new"              # both sockets connected, nothing read yet (start() not called)
    RELAYING = "relaying"    # reading and writing both ways
    CLOSING = "closing"      # one side reached EOF: nothing more is read, what it sent drains
    CLOSED = "closed"        # sockets closed, descriptors released, on_closed called


def read_buffer() -> memoryview:
    """A receive buffer for Sessions to share (one loop, one read at a time; the
    decoder copies what it keeps)."""
    return memoryview(bytearray(READ_CHUNK))


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


class Pipe:
    """One direction of a session: read messages from ``src``, write them to ``dst``."""

    def __init__(self, session: "Session", name: str, src: socket.socket, dst: socket.socket,
                 intercept: Optional[InterceptFn], max_message: int, rview: memoryview):
        self.session = session
        self.name = name
        self.src = src
        self.dst = dst
        self.intercept = intercept
        self.decoder = FrameDecoder(max_message)
        self.max_message = max_message
        self.rview = rview  # shared: the decoder copies what it keeps
        self.rbufs = [rview]
        self.fds: collections.deque[tuple[int, int]] = collections.deque()  # (stream offset tag, fd)
        self.out: collections.deque = collections.deque()  # bytes | memoryview | _FdItem
        self.out_bytes = 0
        # Registration with the loop, and this direction's own end:
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
        raw = frame.raw if self.intercept is None else self.intercept(frame, self.session.number)
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

    def stop_writing(self) -> None:
        if self.writing:
            self.session.loop.remove_writer(self.dst.fileno())
            self.writing = False

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


class Session:
    """One client connection and its own upstream connection, relayed both ways.

    The session owns both sockets from construction on: ``close`` closes them.
    ``on_closed(session, reason)`` is called exactly once, when it is CLOSED;
    ``stats["protocol_errors"]`` counts sessions dropped for malformed traffic.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, number: int, client: socket.socket,
                 upstream: socket.socket, peer: str, *, intercept: Optional[InterceptFn],
                 on_closed: Callable[["Session", str], None], stats: dict, log: logging.Logger,
                 max_message: int, rview: memoryview):
        self.loop = loop
        self.number = number
        self.peer = peer
        self.client = client
        self.upstream = upstream
        self.state = State.NEW
        self._on_closed = on_closed
        self._stats = stats
        self._log = log
        self._flush_timer: asyncio.TimerHandle | None = None
        self.c2u = Pipe(self, f"client#{number}->upstream", client, upstream, intercept, max_message, rview)
        self.u2c = Pipe(self, f"upstream->client#{number}", upstream, client, None, max_message, rview)

    def start(self) -> None:
        if self.state is not State.NEW:
            return
        self.state = State.RELAYING
        self.c2u.start_reading()
        self.u2c.start_reading()

    def protocol_error(self, where: str, err: FrameError) -> None:
        self._log.warning("dropping session #%d (%s): %s: %s", self.number, self.peer, where, err)
        self._log.debug("offending bytes: %r", err.raw[:256])
        self._stats["protocol_errors"] += 1
        self.close(f"{where}: {err}")
        raise _SessionClosed

    def peer_eof(self, pipe: Pipe) -> None:
        """``pipe.src`` closed: deliver what it already sent, then end the session."""
        self._log.debug("session #%d: %s reached EOF", self.number, pipe.name)
        self.state = State.CLOSING
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

    def drained(self, pipe: Pipe) -> None:
        """Everything ``pipe`` queued after its source's EOF was written."""
        self.close(f"{pipe.name}: EOF")
        raise _SessionClosed

    def close(self, reason: str = "") -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        for pipe in (self.c2u, self.u2c):
            pipe.stop_reading()
            pipe.stop_writing()
            pipe.discard()
        self.client.close()
        self.upstream.close()
        self._on_closed(self, reason)
