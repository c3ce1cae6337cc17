"""The proxy's interceptor: the domain XML of a client->libvirtd call, through the policy callback.

This module owns: telling which messages are intercepted (a CALL or
CALL_WITH_FDS of a REMOTE_PROGRAM procedure in hookd.rpc.procedures.CODECS), decoding
such a call's arguments, handing its domain XML to the ``rewrite`` callback,
re-encoding the call with the XML the callback returned (same header, serial
and descriptor count; length word fixed), the definitions_seen /
definitions_rewritten / errors counters, and reporting every failure to
``on_error``.

It must not do: sockets or any I/O (it takes a decoded hookd.rpc.frame.Frame
and returns the bytes to forward), policy (the callback decides), audit (the
callback records it), XDR or framing details (hookd.rpc.xdr, hookd.rpc.frame).
It never breaks a call it does not understand: on any decode, callback or
re-encode failure the original bytes are returned untouched and ``on_error``
is called; a message it does not intercept is returned as it came.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from hookd.rpc.frame import CALL_TYPES, MESSAGE_MAX, REMOTE_PROGRAM, Frame, FrameError
from hookd.rpc.procedures import CODECS
from hookd.rpc.xdr import XdrError

#: ``rewrite(op, xml)``: the XML to forward instead, or None to forward the call unchanged.
RewriteFn = Callable[[str, str], "str | None"]
#: ``on_error(op, xml, err)``: a call was forwarded unchanged because of ``err``.
ErrorFn = Callable[[str, str, BaseException], None]

#: The counters an Interceptor adds to (in the dict it is given).
STATS_KEYS = ("definitions_seen", "definitions_rewritten", "errors")


class Interceptor:
    """``interceptor(frame, session)``: the bytes to forward for one client->libvirtd message.

    ``session`` (a number) only names the connection in log lines. ``stats`` is
    the dict whose STATS_KEYS counters it increments (its own if not given).
    """

    def __init__(self, rewrite: RewriteFn, on_error: ErrorFn, *, max_message: int = MESSAGE_MAX,
                 stats: Optional[dict] = None, log: Optional[logging.Logger] = None):
        self._rewrite = rewrite
        self._on_error = on_error
        self.max_message = max_message
        self.stats = stats if stats is not None else {}
        for key in STATS_KEYS:
            self.stats.setdefault(key, 0)
        self._log = log or logging.getLogger("hookd.rpc.proxy")

    @staticmethod
    def wants(frame: Frame) -> bool:
        """Whether ``frame`` is a call whose domain XML is intercepted."""
        header = frame.header
        return (header.program == REMOTE_PROGRAM and header.procedure in CODECS
                and header.type in CALL_TYPES)

    def __call__(self, frame: Frame, session: int = 0) -> bytes:
        header = frame.header  # wants(), inline: this runs for every client->libvirtd message
        if (header.program == REMOTE_PROGRAM and header.procedure in CODECS
                and header.type in CALL_TYPES):
            return self.intercept(frame, session)
        return frame.raw

    def intercept(self, frame: Frame, session: int = 0) -> bytes:
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

    def _report(self, op: str, xml: str, err: BaseException, session: int) -> None:
        self.stats["errors"] += 1
        self._log.error("session #%d: %s call forwarded unchanged: %s: %s",
                        session, op, type(err).__name__, err)
        self._log.debug("traceback of the %s failure", op, exc_info=err)
        try:
            self._on_error(op, xml, err)
        except Exception as cb_err:
            self._log.error("on_error callback failed: %s: %s", type(cb_err).__name__, cb_err)
            self._log.debug("traceback of the on_error failure", exc_info=cb_err)
