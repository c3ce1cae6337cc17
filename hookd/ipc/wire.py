"""Framing of the hook socket: one JSON message behind a 4-byte length.

Owns encode/decode of a single message, the size limit, and the decode error that
keeps the raw bytes it could not read. No business logic: which messages exist is
hookd.ipc.messages' concern (PROTOCOL_VERSION too), what they mean their handlers'.
The hook socket's control calls (hookctl) and the daemon <-> libvirt worker channel
use this framing; the qemu hook shim speaks hookd.hookpath.shimwire on the hook socket.

    message = length:uint32 big-endian | body: UTF-8 JSON object of `length` bytes
"""

from __future__ import annotations

import asyncio
import json
import struct

from hookd.errors import ProtocolError

HEADER = struct.Struct(">I")
#: A domain XML is at most 32 MiB (libvirt's own message limit); JSON escaping of
#: its quotes and newlines can make it longer.
MAX_MESSAGE = 48 * 1024 * 1024


class MessageError(ProtocolError):
    """A message that could not be decoded; `raw` holds the bytes as received."""

    def __init__(self, reason: str, raw: bytes = b""):
        super().__init__(reason)
        self.raw = raw


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        raise MessageError(f"message of {len(body)} bytes is over the {MAX_MESSAGE}-byte limit")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # RecursionError: JSON nested deeper than the interpreter's recursion limit.
        raise MessageError(f"undecodable message: {err}", body) from err
    if not isinstance(message, dict):
        raise MessageError("message is not a JSON object", body)
    return message


def decode(data: bytes) -> dict:
    """Decode exactly one whole message (header + body)."""
    if len(data) < HEADER.size:
        raise MessageError("truncated header", data)
    (length,) = HEADER.unpack_from(data)
    if length > MAX_MESSAGE:
        raise MessageError(f"announced length {length} is over the {MAX_MESSAGE}-byte limit", data[:HEADER.size])
    if len(data) != HEADER.size + length:
        raise MessageError(f"announced {length} bytes, got {len(data) - HEADER.size}", data)
    return decode_body(data[HEADER.size:])


async def read_message(reader: asyncio.StreamReader, limit: int = MAX_MESSAGE, head: bytes = b"") -> dict:
    """Read one message from a stream; EOF before a header raises EOFError.

    `head` is the header if the caller already read it (hookd.hookpath.server reads four bytes
    to tell a JSON message from a shim request)."""
    if not head:
        try:
            head = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                raise EOFError("connection closed") from err
            raise MessageError("truncated header", err.partial) from err
    (length,) = HEADER.unpack(head)
    if length > limit:
        raise MessageError(f"announced length {length} is over the {limit}-byte limit", head)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise MessageError(f"announced {length} bytes, got {len(err.partial)}", head + err.partial) from err
    return decode_body(body)
