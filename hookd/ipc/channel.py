"""One asyncio channel of typed messages (hookd.ipc.messages) over a stream pair.

Used by both ends of the daemon <-> libvirt worker socketpair (hookd.virt.supervisor,
hookd.virt.worker). Owns: sending a message (hookd.ipc.wire framing), reading
messages until EOF and handing each to its handler by kind (a table: message class
-> handler), numbering requests and matching each REPLY message to the future of
its request by id, with a bounded wait on every request, and failing the requests
still waiting when the channel closes.

Every asyncio object it uses (the request futures) is made inside the running
loop, at the call that needs it; __init__ makes none, so a channel may be built
before asyncio.run (on Python 3.9 an object made then binds to another loop).

It must not know what a message means (its handlers do), block, catch
CancelledError, or decide what happens to a peer that sends garbage: serve()
raises ProtocolError for an undecodable frame and returns at EOF; the owner decides.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Type

from hookd.errors import HookdError
from hookd.ipc import wire
from hookd.ipc.messages import InvalidMessage, Message, Table, UnknownKind, decode

Handler = Callable[[Any], None]


class ChannelError(HookdError):
    """A request on a channel that got no answer."""


class ChannelClosed(ChannelError):
    """The channel closed (or could not send) before the answer came."""


class RequestTimeout(ChannelError):
    """No answer within the request's bound."""


class Channel:
    """`incoming` is the protocol's table of kinds the peer may send; `handlers` maps a
    (non-REPLY) message class to a plain function called with each such message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, incoming: Table,
                 handlers: Mapping[Type[Message], Handler], peer: str,
                 log: Optional[logging.Logger] = None):
        self._reader = reader
        self._writer: Optional[asyncio.StreamWriter] = writer
        self._incoming = incoming
        self._handlers: Dict[Type[Message], Handler] = dict(handlers)
        self.peer = peer
        self._log = log or logging.getLogger("hookd.ipc.channel")
        self._next_id = 0
        self._pending: Dict[int, asyncio.Future] = {}

    # ------------------------------------------------------------- sending
    @property
    def open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def send(self, msg: Message) -> bool:
        """Queue one message; False (logged) if the channel is closed or the message cannot be framed."""
        if not self.open:
            return False
        try:
            self._writer.write(wire.encode(msg.to_dict()))
        except (HookdError, OSError) as err:
            self._log.error("cannot send %s to %s: %s", msg.KIND or type(msg).__name__, self.peer, err)
            return False
        return True

    async def request(self, make: Callable[[int], Message], timeout: float) -> Message:
        """Send make(id) and wait at most `timeout` seconds for the REPLY with that id.
        ChannelClosed if it cannot be sent or the channel closes first, RequestTimeout after."""
        self._next_id += 1
        req = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        try:
            if not self.send(make(req)):
                raise ChannelClosed(f"cannot reach {self.peer}")
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no answer from {self.peer} within {timeout:g} s") from None
        finally:
            self._pending.pop(req, None)

    @property
    def waiting(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    # ------------------------------------------------------------- receiving
    async def serve(self, on_handler_error: Optional[Callable[[Message, Exception], None]] = None) -> None:
        """Read and handle messages until the peer closes (then return).

        An undecodable frame raises ProtocolError (hookd.ipc.wire.MessageError); a
        decodable one of an unknown kind or with a missing field is logged and
        skipped. A handler's exception ends serve() unless on_handler_error takes it."""
        while True:
            try:
                raw = await wire.read_message(self._reader)
            except (EOFError, ConnectionError):
                return
            try:
                msg = decode(self._incoming, raw)
            except UnknownKind as err:
                self._log.error("unknown message %r from %s; ignored", err.kind, self.peer)
                continue
            except InvalidMessage as err:
                self._log.error("invalid message from %s: %s; ignored", self.peer, err)
                continue
            if msg.REPLY:
                self._resolve(msg)
            else:
                handler = self._handlers.get(type(msg))
                if handler is None:
                    self._log.error("message %r from %s has no handler here; ignored", msg.KIND, self.peer)
                elif on_handler_error is None:
                    handler(msg)
                else:
                    try:
                        handler(msg)
                    except Exception as err:  # the owner logs it; the channel goes on
                        on_handler_error(msg, err)
            # A burst of buffered messages is read without suspending otherwise: let
            # the rest of the loop (hook requests) in between two of them.
            await asyncio.sleep(0)

    def _resolve(self, msg: Message) -> None:
        fut = self._pending.pop(getattr(msg, "id", None), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        # else: the answer to a request that timed out already; dropped.

    # ------------------------------------------------------------- closing
    def fail_pending(self, why: str) -> None:
        """Fail every request still waiting with ChannelClosed(why)."""
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(why))

    def close(self, why: str = "the channel closed") -> None:
        """Close the writer (no more sends) and fail the requests still waiting."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.fail_pending(why)

    async def aclose(self, why: str = "the channel closed", timeout: float = 2.0) -> None:
        """close(), then wait a bounded time for the writer's buffer to go out."""
        writer = self._writer
        self.close(why)
        if writer is None:
            return
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout)
        except (OSError, asyncio.TimeoutError):
            pass

