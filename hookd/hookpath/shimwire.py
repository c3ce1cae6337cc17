"""The hook shim's wire format: one request from hooks/hookd-shim.c, one answer back.

Owns encode/decode of one request and one reply, their size limits, and the decode
error that keeps the raw bytes. No business logic: what a request means is
hookd.hookpath.handler's concern, who may send one is hookd.hookpath.server's. The format is the
simplest that C parses safely with fixed buffers: a text header line of decimal
lengths, then raw bytes (no escaping, so the XML travels byte for byte)::

    request = "HOOKD1 " op " " sub " " deadline_ms " " name_len " " extra_len " " xml_len "\\n"
              name extra xml
    reply   = "HOOKD1 allow 0\\n"
            | "HOOKD1 deny " reason_len "\\n" reason

- op, sub: 1 to 16 lower-case ASCII letters (libvirt's own words: prepare, begin, ...).
- deadline_ms: wall-clock milliseconds since the epoch when the shim gives up (0: none);
  hookd records an answer given after it as `expired`, not as a decision.
- name_len, extra_len <= MAX_FIELD; xml_len <= MAX_XML + 1: the shim reads at most one
  byte past hookd's XML limit, so hookd (which records every call) is the one that says
  a definition is too large.
- reason_len <= MAX_REASON (UTF-8, one line); a longer reason is cut by encode_reply.
- Decimals have no sign and no leading zeros; the header line is at most MAX_HEADER bytes.
- A reply never carries XML: libvirt's ABI check refuses a serial change on migrate and
  restore, and prepare's output is ignored, so the shim's stdout stays empty.

The first four bytes, "HOOK", cannot begin a hook-socket JSON message (hookd.ipc.wire: a
big-endian length of at most 48 MiB starts with a byte below 0x04), so one socket
carries both and hookd.hookpath.server tells them apart by those bytes.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Optional

from hookd.errors import ProtocolError
from hookd.xml.safe import MAX_XML_BYTES

MAGIC = b"HOOKD1"
#: What hookd.hookpath.server reads to tell a shim request from a JSON message.
PREFIX = MAGIC[:4]
MAX_XML = MAX_XML_BYTES
MAX_FIELD = 4096
MAX_REASON = 4000
MAX_HEADER = 128

ACTION_ALLOW = "allow"
ACTION_DENY = "deny"

_WORD = rb"[a-z]{1,16}"
_NUM = rb"(?:0|[1-9][0-9]{0,19})"
_REQUEST_HEADER = re.compile(
    rb"HOOKD1 (" + _WORD + rb") (" + _WORD + rb") (" + _NUM + rb") (" + _NUM + rb") ("
    + _NUM + rb") (" + _NUM + rb")\n")
_REPLY_HEADER = re.compile(rb"HOOKD1 (allow|deny) (0|[1-9][0-9]{0,3})\n")


class ShimWireError(ProtocolError):
    """A request or reply that could not be decoded; `raw` holds the bytes as received."""

    def __init__(self, reason: str, raw: bytes = b""):
        super().__init__(reason)
        self.raw = raw


@dataclass(frozen=True)
class HookRequest:
    op: str
    sub: str
    domain: str
    extra: str
    xml: bytes
    #: Wall-clock seconds when the shim gives up, or None.
    deadline: Optional[float] = None


@dataclass(frozen=True)
class HookReply:
    action: str = ACTION_ALLOW
    reason: str = ""

    @property
    def denied(self) -> bool:
        return self.action == ACTION_DENY


def _text(data: bytes) -> str:
    # Domain names are whatever libvirt accepted; keep undecodable bytes visible.
    return data.decode("utf-8", "surrogateescape")


def encode_request(req: HookRequest) -> bytes:
    name = req.domain.encode("utf-8", "surrogateescape")
    extra = req.extra.encode("utf-8", "surrogateescape")
    deadline_ms = 0 if req.deadline is None else max(int(req.deadline * 1000), 0)
    header = b"HOOKD1 %s %s %d %d %d %d\n" % (req.op.encode("ascii", "replace"), req.sub.encode("ascii", "replace"),
                                              deadline_ms, len(name), len(extra), len(req.xml))
    if _REQUEST_HEADER.fullmatch(header) is None or len(header) > MAX_HEADER:
        raise ShimWireError(f"op {req.op!r} / sub {req.sub!r} are not words of 1 to 16 letters", header)
    _check_lengths(len(name), len(extra), len(req.xml), header)
    return header + name + extra + req.xml


def _check_lengths(name_len: int, extra_len: int, xml_len: int, raw: bytes) -> None:
    if name_len > MAX_FIELD or extra_len > MAX_FIELD:
        raise ShimWireError(f"domain name or extra over {MAX_FIELD} bytes", raw)
    if xml_len > MAX_XML + 1:
        raise ShimWireError(f"announced XML of {xml_len} bytes is over the {MAX_XML + 1}-byte limit", raw)


def _parse_request_header(line: bytes):
    m = _REQUEST_HEADER.fullmatch(line)
    if m is None:
        raise ShimWireError("not a hookd shim request header", line)
    op, sub = m.group(1).decode(), m.group(2).decode()
    deadline_ms, name_len, extra_len, xml_len = (int(g) for g in m.groups()[2:])
    _check_lengths(name_len, extra_len, xml_len, line)
    return op, sub, deadline_ms, name_len, extra_len, xml_len


def _request(op, sub, deadline_ms, name: bytes, extra: bytes, xml: bytes) -> HookRequest:
    return HookRequest(op=op, sub=sub, domain=_text(name), extra=_text(extra), xml=xml,
                       deadline=deadline_ms / 1000 if deadline_ms else None)


def decode_request(data: bytes) -> HookRequest:
    """Decode exactly one whole request."""
    end = data.find(b"\n", 0, MAX_HEADER)
    if end < 0:
        raise ShimWireError("no request header line", data[:MAX_HEADER])
    op, sub, deadline_ms, name_len, extra_len, xml_len = _parse_request_header(data[:end + 1])
    body = data[end + 1:]
    if len(body) != name_len + extra_len + xml_len:
        raise ShimWireError(f"announced {name_len + extra_len + xml_len} bytes, got {len(body)}", data)
    return _request(op, sub, deadline_ms, body[:name_len], body[name_len:name_len + extra_len],
                    body[name_len + extra_len:])


async def read_request(reader: asyncio.StreamReader, head: bytes = b"") -> HookRequest:
    """Read one request from a stream; `head` is what the caller already read of it."""
    try:
        # One call, not a byte at a time: a boot storm sends hundreds of these at once.
        # The stream's own limit (64 KiB by default) bounds what a line without "\n" costs.
        line = head + await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as err:
        raise ShimWireError("truncated request header", (head + err.partial)[:MAX_HEADER]) from err
    except asyncio.LimitOverrunError as err:
        raise ShimWireError("request header line over the limit", head) from err
    if len(line) > MAX_HEADER:
        raise ShimWireError("request header line over the limit", line[:MAX_HEADER])
    op, sub, deadline_ms, name_len, extra_len, xml_len = _parse_request_header(line)
    try:
        body = await reader.readexactly(name_len + extra_len + xml_len)
    except asyncio.IncompleteReadError as err:
        raise ShimWireError(f"announced {name_len + extra_len + xml_len} bytes, got {len(err.partial)}",
                            line + err.partial[:200]) from err
    return _request(op, sub, deadline_ms, body[:name_len], body[name_len:name_len + extra_len],
                    body[name_len + extra_len:])


def encode_reply(reply: HookReply) -> bytes:
    if reply.action == ACTION_ALLOW:
        return b"HOOKD1 allow 0\n"
    if reply.action != ACTION_DENY:
        raise ShimWireError(f"reply action {reply.action!r} is neither allow nor deny")
    reason = " ".join(reply.reason.splitlines()).encode("utf-8", "replace")
    if len(reason) > MAX_REASON:
        # A refusal must still reach the client; cut at a character boundary.
        reason = reason[:MAX_REASON - 3].decode("utf-8", "ignore").encode() + b"..."
    return b"HOOKD1 deny %d\n" % len(reason) + reason


def decode_reply(data: bytes) -> HookReply:
    """Decode exactly one whole reply (what the C shim's parser accepts, for Python clients)."""
    end = data.find(b"\n", 0, MAX_HEADER)
    m = _REPLY_HEADER.fullmatch(data[:end + 1]) if end >= 0 else None
    if m is None:
        raise ShimWireError("not a hookd shim reply header", data[:MAX_HEADER])
    action, length = m.group(1).decode(), int(m.group(2))
    reason = data[end + 1:]
    if len(reason) != length or length > MAX_REASON or (action == ACTION_ALLOW and length):
        raise ShimWireError(f"reply announces {length} reason bytes, has {len(reason)}", data)
    return HookReply(action=action, reason=reason.decode("utf-8", "replace"))
