"""Typed messages of hookd's two internal JSON protocols.

  - control, on the hook socket: hookctl (and doctor) ask the daemon (hookd.daemon)
    for its status or a reconcile; a 0.1 shim's JSON hook call is recognised only to
    be refused;
  - worker, on the socketpair between the daemon (hookd.virt.supervisor) and its
    libvirt worker (hookd.virt.worker), one table of kinds for each direction.

Owns every message kind in use, PROTOCOL_VERSION (the one definition), the
conversion of each message to and from the JSON object hookd.ipc.wire frames
(field names and their order are today's: the bytes on the wire stay the same), the
tables that map a kind to its class, and the errors for an unknown kind or a
missing or ill-typed field. Reading is as lenient as the handlers that predate
these types were (an absent `dry_run` is False, an absent `why` is "a reconnect").

It must not do I/O, import asyncio, or know what a message causes: the handlers
live with their owners (daemon, supervisor, worker), the framing in hookd.ipc.wire.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Type, Union

from hookd.errors import ProtocolError

#: The version every control message and reply carries as "v" (the worker
#: protocol has none: both ends are always the same installation).
PROTOCOL_VERSION = 1


class InvalidMessage(ProtocolError):
    """A JSON object that is not a valid message of the protocol it arrived on."""


class UnknownKind(InvalidMessage):
    """An "op" that names no message of that protocol (or is missing, or not a string)."""

    def __init__(self, kind: Any, protocol: str):
        super().__init__(f"unknown {protocol} message {kind!r}")
        self.kind = kind
        self.protocol = protocol


class MissingField(InvalidMessage):
    """A known kind without one of its required fields, or with a field of the wrong type."""

    def __init__(self, kind: str, field: str, why: str = "missing"):
        super().__init__(f"{kind!r} message: field {field!r} {why}")
        self.kind = kind
        self.field = field


class Message:
    """Base of every message: KIND is its "op"; REPLY marks the answer to a request,
    matched by its `id` (hookd.ipc.channel resolves those instead of dispatching them)."""

    KIND: ClassVar[str] = ""
    REPLY: ClassVar[bool] = False

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Message":
        raise NotImplementedError


def _request_id(d: Mapping[str, Any], kind: str) -> int:
    if "id" not in d:
        raise MissingField(kind, "id")
    value = d["id"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MissingField(kind, "id", f"is {type(value).__name__}, not an integer")
    return value


def _text(value: Any) -> str:
    """A string field as the handlers read it before: absent or empty is ""."""
    return str(value or "")


# ------------------------------------------------------------------ control protocol
# hookctl -> daemon, on the hook socket. The daemon does not check "v".

@dataclasses.dataclass(frozen=True)
class StatusQuery(Message):
    """`hookctl status`: the daemon answers a StatusReply."""
    KIND: ClassVar[str] = "status"

    def to_dict(self) -> dict:
        return {"v": PROTOCOL_VERSION, "op": self.KIND}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StatusQuery":
        return cls()


@dataclasses.dataclass(frozen=True)
class ReconcileQuery(Message):
    """`hookctl reconcile [--dry-run]`: a ReconcileReply or an ErrorReply."""
    KIND: ClassVar[str] = "reconcile"
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"v": PROTOCOL_VERSION, "op": self.KIND, "dry_run": bool(self.dry_run)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReconcileQuery":
        return cls(dry_run=bool(d.get("dry_run")))


@dataclasses.dataclass(frozen=True)
class LegacyHookCall(Message):
    """A hook call of a 0.1 shim in the JSON framing ("prepare", "migrate", "restore"):
    recognised only to be refused with a warning (its start goes ahead unchecked)."""
    KINDS: ClassVar[tuple] = ("prepare", "migrate", "restore")
    op: str
    domain: Any = None

    def to_dict(self) -> dict:
        return {"v": PROTOCOL_VERSION, "op": self.op, "domain": self.domain}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LegacyHookCall":
        return cls(op=str(d.get("op")), domain=d.get("domain"))


# Replies of the control protocol carry no "op": each answers the request before it.

@dataclasses.dataclass(frozen=True)
class ErrorReply(Message):
    """A refused or failed control request."""
    error: str

    def to_dict(self) -> dict:
        return {"v": PROTOCOL_VERSION, "error": self.error}


@dataclasses.dataclass(frozen=True)
class ReconcileReply(Message):
    """What a reconcile looked at: one dict per domain (ReconcileItem.as_dict())."""
    items: List[dict]

    def to_dict(self) -> dict:
        return {"v": PROTOCOL_VERSION, "items": list(self.items)}


@dataclasses.dataclass(frozen=True)
class StatusReply(Message):
    """The daemon's status: an open-ended tree of counters (hookctl status --json shows it as is)."""
    status: Dict[str, Any]

    def to_dict(self) -> dict:
        return {"v": PROTOCOL_VERSION, **self.status}


ReconcileOutcome = Union[ReconcileReply, ErrorReply]


def reconcile_outcome(d: Any, empty: str = "empty answer from the libvirt worker") -> ReconcileOutcome:
    """The result of a reconcile as the worker sent it (an empty one is an ErrorReply)."""
    if not d:
        return ErrorReply(empty)
    if not isinstance(d, Mapping):
        raise MissingField(ReconcileResult.KIND, "result", f"is {type(d).__name__}, not an object")
    if d.get("error"):
        return ErrorReply(str(d["error"]))
    items = d.get("items")
    if not isinstance(items, list):
        raise MissingField(ReconcileResult.KIND, "result.items", "missing" if items is None else "not a list")
    return ReconcileReply(items)


# ------------------------------------------------------------------ worker protocol
# daemon -> worker

@dataclasses.dataclass(frozen=True)
class Stop(Message):
    """Stop now (the daemon SIGKILLs a worker that does not, after a grace period)."""
    KIND: ClassVar[str] = "stop"

    def to_dict(self) -> dict:
        return {"op": self.KIND}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Stop":
        return cls()


@dataclasses.dataclass(frozen=True)
class Reload(Message):
    """The configuration changed: read it again."""
    KIND: ClassVar[str] = "reload"

    def to_dict(self) -> dict:
        return {"op": self.KIND}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Reload":
        return cls()


@dataclasses.dataclass(frozen=True)
class NoteHook(Message):
    """A qemu hook call the daemon served; `t` is its CLOCK_MONOTONIC time (system-wide)."""
    KIND: ClassVar[str] = "note_hook"
    instance_uuid: str
    hook: str
    t: Optional[float] = None

    def to_dict(self) -> dict:
        return {"op": self.KIND, "instance_uuid": self.instance_uuid, "hook": self.hook, "t": self.t}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NoteHook":
        t = d.get("t")
        return cls(instance_uuid=_text(d.get("instance_uuid")), hook=str(d.get("hook")),
                   t=t if isinstance(t, (int, float)) and not isinstance(t, bool) else None)


@dataclasses.dataclass(frozen=True)
class ReconcileRequest(Message):
    """Run `hookctl reconcile` (answered by a ReconcileResult with the same id)."""
    KIND: ClassVar[str] = "reconcile"
    id: int
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"op": self.KIND, "id": self.id, "dry_run": bool(self.dry_run)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReconcileRequest":
        return cls(id=_request_id(d, cls.KIND), dry_run=bool(d.get("dry_run")))


@dataclasses.dataclass(frozen=True)
class PinAnswer(Message):
    """The answer to a PinRequest: the instance's pinned serial, or None."""
    KIND: ClassVar[str] = "pin"
    REPLY: ClassVar[bool] = True
    id: int
    instance_uuid: str
    serial: Optional[str] = None

    def to_dict(self) -> dict:
        return {"op": self.KIND, "id": self.id, "instance_uuid": self.instance_uuid, "serial": self.serial}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PinAnswer":
        serial = d.get("serial")
        return cls(id=_request_id(d, cls.KIND), instance_uuid=_text(d.get("instance_uuid")),
                   serial=serial if isinstance(serial, str) else None)


# worker -> daemon

@dataclasses.dataclass(frozen=True)
class AuditRow(Message):
    """One audit row for the daemon to write (through its boot ledger)."""
    KIND: ClassVar[str] = "audit"
    row: Dict[str, Any]

    def to_dict(self) -> dict:
        return {"op": self.KIND, "row": self.row}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditRow":
        row = d.get("row")
        if not isinstance(row, dict):
            raise MissingField(cls.KIND, "row", "missing" if row is None else "not an object")
        return cls(row=row)


@dataclasses.dataclass(frozen=True)
class WorkerStatus(Message):
    """The worker's counters: `events` (the libvirt connection) and `reconcile`."""
    KIND: ClassVar[str] = "status"
    events: Optional[Dict[str, Any]] = None
    reconcile: Optional[Dict[str, Any]] = None

    def to_dict(self) -> dict:
        return {"op": self.KIND, "events": self.events, "reconcile": self.reconcile}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WorkerStatus":
        events, reconcile = d.get("events"), d.get("reconcile")
        return cls(events=events if isinstance(events, dict) else None,
                   reconcile=reconcile if isinstance(reconcile, dict) else None)


@dataclasses.dataclass(frozen=True)
class PinRequest(Message):
    """The worker asks the daemon (the pin store's one owner) for an instance's pin."""
    KIND: ClassVar[str] = "pin"
    id: int
    instance_uuid: str

    def to_dict(self) -> dict:
        return {"op": self.KIND, "id": self.id, "instance_uuid": self.instance_uuid}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PinRequest":
        return cls(id=_request_id(d, cls.KIND), instance_uuid=_text(d.get("instance_uuid")))


@dataclasses.dataclass(frozen=True)
class ReconcileResult(Message):
    """The answer to a ReconcileRequest, passed on to hookctl as is."""
    KIND: ClassVar[str] = "reply"
    REPLY: ClassVar[bool] = True
    id: int
    result: ReconcileOutcome

    def to_dict(self) -> dict:
        return {"op": self.KIND, "id": self.id, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReconcileResult":
        return cls(id=_request_id(d, cls.KIND), result=reconcile_outcome(d.get("result")))


@dataclasses.dataclass(frozen=True)
class Resync(Message):
    """After a connect: the running domains (rows with their boot keys) for the daemon's
    boot ledger, and the UUIDs of those still starting or migrating in."""
    KIND: ClassVar[str] = "resync"
    why: str
    running: List[dict]
    pending: List[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"op": self.KIND, "why": self.why, "running": self.running, "pending": self.pending}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Resync":
        running, pending = d.get("running"), d.get("pending")
        if not isinstance(running, list):
            raise MissingField(cls.KIND, "running", "missing" if running is None else "not a list")
        return cls(why=str(d.get("why") or "a reconnect"), running=running,
                   pending=[str(u) for u in pending] if isinstance(pending, list) else [])


# ------------------------------------------------------------------ kind tables

Table = Mapping[str, Type[Message]]

#: hookctl -> daemon, on the hook socket.
CONTROL: Table = {StatusQuery.KIND: StatusQuery, ReconcileQuery.KIND: ReconcileQuery,
                  **{op: LegacyHookCall for op in LegacyHookCall.KINDS}}
#: daemon -> worker, on the socketpair.
TO_WORKER: Table = {m.KIND: m for m in (Stop, Reload, NoteHook, ReconcileRequest, PinAnswer)}
#: worker -> daemon, on the socketpair.
FROM_WORKER: Table = {m.KIND: m for m in (AuditRow, WorkerStatus, PinRequest, ReconcileResult, Resync)}

_PROTOCOL_NAMES = {id(CONTROL): "control", id(TO_WORKER): "daemon-to-worker", id(FROM_WORKER): "worker-to-daemon"}


def decode(table: Table, d: Mapping[str, Any]) -> Message:
    """The typed message of a decoded JSON object; UnknownKind or MissingField if it is none."""
    op = d.get("op")
    cls = table.get(op) if isinstance(op, str) else None       # a list or dict op is unhashable
    if cls is None:
        raise UnknownKind(op, _PROTOCOL_NAMES.get(id(table), "internal"))
    return cls.from_dict(d)


def decode_control(d: Mapping[str, Any]) -> Message:
    return decode(CONTROL, d)
