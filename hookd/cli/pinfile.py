"""Pin files: importing and exporting many pins at once (`hookctl pins --import/--export`).

Owns reading a file of (instance UUID, serial) rows in CSV or JSON, validating every
row like any pin (hookd.stores.pins.check_pin), classifying each row against the pins a
store already holds, and writing pins back in the same formats. It decides nothing
about serials and never writes a store itself: hookd.cli.pins does, create-if-absent
(first writer wins; an existing pin is never overwritten).

Formats (the same for import and export):

  csv   a header naming the columns `instance_uuid` and `serial` (any order; other
        columns are ignored), then one row per instance;
  json  a list of objects with the keys `instance_uuid` and `serial` (other keys
        are ignored).

A migration tool's serials come verbatim: VMware's form, `VMware-42 3e fd ...-5e 6f
...`, is a valid serial (spaces and dashes are allowed; ',' ';' '=' are not).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from hookd.errors import HookdError, StoreError
from hookd.policy.model import canonical_uuid
from hookd.stores.pins import check_pin

FORMATS = ("csv", "json")
COLUMNS = ("instance_uuid", "serial")
#: A file of pins is read whole; a cloud's worth of pins is far below this.
MAX_PIN_FILE_BYTES = 64 * 1024 * 1024

IMPORTED, SAME, KEPT = "imported", "unchanged", "kept"


class PinFileError(HookdError):
    """A pin file that cannot be read as a whole (unreadable, not CSV/JSON, no header)."""


@dataclass(frozen=True)
class Row:
    line: int                 # 1-based line of the file where the row is (ends, for CSV)
    uuid: str                 # canonical
    serial: str


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str


@dataclass
class Parsed:
    rows: List[Row]           # valid rows, first of each instance, in file order
    problems: List[Problem]   # invalid rows, in file order
    duplicates: List[Tuple[Row, int]]   # (repeat with the same serial, line of the first)
    total: int                # data rows read


def guess_format(path: str, fmt: Optional[str]) -> str:
    """`fmt` if given, else json for a FILE ending in .json, else csv."""
    if fmt is not None:
        return fmt
    return "json" if path.lower().endswith(".json") else "csv"


def read_source(path: str, stdin=None) -> bytes:
    """The bytes of FILE, or of stdin for "-", bounded by MAX_PIN_FILE_BYTES."""
    import sys
    try:
        if path == "-":
            data = (stdin or sys.stdin.buffer).read(MAX_PIN_FILE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PIN_FILE_BYTES + 1)
    except OSError as err:
        raise PinFileError(f"cannot read {path}: {err.strerror or err}") from err
    if len(data) > MAX_PIN_FILE_BYTES:
        raise PinFileError(f"{path} is over {MAX_PIN_FILE_BYTES // (1024 * 1024)} MiB")
    return data


def _text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")       # spreadsheets write a BOM
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise PinFileError(f"{source} line {line}: not valid UTF-8") from None


def _csv_records(text: str, source: str):
    """(line, instance, serial) of each data row; PinFileError for a bad header or CSV."""
    if "\0" in text:
        raise PinFileError(f"{source} line {text[:text.index(chr(0))].count(chr(10)) + 1}: holds a NUL byte")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = None
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue                      # blank lines, before or between rows
            if header is None:
                header = [f.strip().lower() for f in fields]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise PinFileError(f"{source} line {reader.line_num}: the header must name the columns "
                                       f"instance_uuid and serial (missing: {', '.join(missing)})")
                for c in COLUMNS:
                    if header.count(c) > 1:
                        raise PinFileError(f"{source} line {reader.line_num}: the header names {c} twice")
                iu, ise = header.index("instance_uuid"), header.index("serial")
                continue
            instance = fields[iu] if iu < len(fields) else None
            serial = fields[ise] if ise < len(fields) else None
            yield reader.line_num, instance, serial
    except csv.Error as err:
        raise PinFileError(f"{source} line {reader.line_num}: not valid CSV ({err})") from None
    if header is None:
        raise PinFileError(f"{source}: empty; expected a header naming instance_uuid and serial")


_JSON_WS = " \t\n\r"


def _json_records(text: str, source: str):
    """(line, instance, serial) of each object of the top-level list, with the line each starts on."""
    decoder = json.JSONDecoder()

    def fail(msg, pos):
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise PinFileError(f"{source} line {line} column {col}: not valid JSON ({msg})")

    def skip(pos):
        while pos < len(text) and text[pos] in _JSON_WS:
            pos += 1
        return pos

    pos = skip(0)
    if pos == len(text):
        raise PinFileError(f"{source}: empty; expected a JSON list of objects with instance_uuid and serial")
    if text[pos] != "[":
        try:
            decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            fail(err.msg, err.pos)
        raise PinFileError(f"{source}: expected a JSON list of objects with instance_uuid and serial")
    pos = skip(pos + 1)
    records = []
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                item, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                fail(err.msg, err.pos)
            records.append((text.count("\n", 0, pos) + 1, item))
            pos = skip(end)
            if pos < len(text) and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            fail("expecting ',' or ']'", pos)
    if skip(pos) != len(text):
        fail("extra data after the list", skip(pos))
    for line, item in records:
        if not isinstance(item, dict):
            yield line, _NOT_AN_OBJECT, None
            continue
        yield line, item.get("instance_uuid"), item.get("serial")


_NOT_AN_OBJECT = object()


def _problem(instance, serial) -> Optional[str]:
    if instance is _NOT_AN_OBJECT:
        return "not an object with instance_uuid and serial"
    if instance is None or instance == "":
        return "no instance_uuid"
    if not isinstance(instance, str):
        return f"instance_uuid {instance!r} is not a string"
    if serial is None:
        return "no serial"
    if not isinstance(serial, str):
        return f"serial {serial!r} is not a string"
    try:
        check_pin(instance, serial)
    except StoreError as err:
        return str(err)
    return None


def parse(data: bytes, fmt: str, source: str = "input") -> Parsed:
    """Every row of a pin file, validated; PinFileError when the file cannot be read as a whole.

    An instance on two rows with the same serial is one pin (the repeat is listed in
    `duplicates`); with different serials, every row of it is a problem: the file
    does not say which serial is right.
    """
    if fmt not in FORMATS:
        raise PinFileError(f"unknown format {fmt!r} (csv or json)")
    text = _text(data, source)
    records = _csv_records(text, source) if fmt == "csv" else _json_records(text, source)
    rows: List[Row] = []
    problems: List[Problem] = []
    duplicates: List[Tuple[Row, int]] = []
    first: Dict[str, Row] = {}
    conflicted: Dict[str, List[Row]] = {}
    total = 0
    for line, instance, serial in records:
        total += 1
        reason = _problem(instance, serial)
        if reason is not None:
            problems.append(Problem(line, reason))
            continue
        row = Row(line, canonical_uuid(instance), serial)
        seen = first.get(row.uuid)
        if seen is None:
            first[row.uuid] = row
        elif seen.serial == row.serial and row.uuid not in conflicted:
            duplicates.append((row, seen.line))
        else:
            conflicted.setdefault(row.uuid, [seen]).append(row)
    for uuid, conflict in conflicted.items():
        for row in conflict:
            others = ", ".join(f"{o.serial!r} on line {o.line}" for o in conflict if o.serial != row.serial)
            problems.append(Problem(row.line, f"instance {uuid} has serial {row.serial!r} here but {others}"))
    duplicates = [(r, ln) for r, ln in duplicates if r.uuid not in conflicted]
    rows = [r for r in first.values() if r.uuid not in conflicted]
    problems.sort(key=lambda p: p.line)
    return Parsed(rows=rows, problems=problems, duplicates=duplicates, total=total)


def classify(rows: List[Row], existing: Dict[str, str]) -> List[Tuple[str, Row, Optional[str]]]:
    """(outcome, row, pinned serial) for each row against the store's pins (uuid -> serial):
    IMPORTED when the instance has no pin, SAME when pinned to the row's serial, KEPT
    when pinned to another (which stays: first writer wins)."""
    out = []
    for row in rows:
        pinned = existing.get(row.uuid)
        if pinned is None:
            out.append((IMPORTED, row, None))
        elif pinned == row.serial:
            out.append((SAME, row, pinned))
        else:
            out.append((KEPT, row, pinned))
    return out


def problem_lines(parsed: Parsed, source: str) -> List[str]:
    return [f"{source} line {p.line}: {p.reason}" for p in parsed.problems]


def report_lines(outcomes, parsed: Parsed, *, dry_run: bool, skipped_invalid: bool) -> List[str]:
    """One line per row (imported, unchanged, kept, duplicate, invalid), in file order."""
    verb = "would import" if dry_run else "imported"
    lines = []
    for outcome, row, pinned in outcomes:
        if outcome == IMPORTED:
            lines.append((row.line, f"line {row.line}: {verb:<12} {row.uuid}  {row.serial!r}"))
        elif outcome == SAME:
            lines.append((row.line, f"line {row.line}: {'unchanged':<12} {row.uuid}  {row.serial!r} "
                                    f"(already pinned to it)"))
        else:
            lines.append((row.line, f"line {row.line}: {'kept':<12} {row.uuid}  already pinned to {pinned!r}; "
                                    f"the file's {row.serial!r} is not imported (first writer wins)"))
    for row, first_line in parsed.duplicates:
        lines.append((row.line, f"line {row.line}: {'duplicate':<12} {row.uuid}  {row.serial!r} "
                                f"(same as line {first_line})"))
    if skipped_invalid:
        for p in parsed.problems:
            lines.append((p.line, f"line {p.line}: {'invalid':<12} {p.reason} (skipped)"))
    lines.sort(key=lambda t: t[0])
    return [text for _, text in lines]


def summary(outcomes, parsed: Parsed, *, source: str, dry_run: bool, backend: str) -> str:
    n = {k: sum(1 for o, _, _ in outcomes if o == k) for k in (IMPORTED, SAME, KEPT)}
    parts = [f"{n[IMPORTED]} {'would be imported' if dry_run else 'imported'}",
             f"{n[SAME]} already pinned to the same serial",
             f"{n[KEPT]} already pinned to a different serial (kept)"]
    if parsed.duplicates:
        parts.append(f"{len(parsed.duplicates)} duplicate")
    parts.append(f"{len(parsed.problems)} invalid" + (" (skipped)" if parsed.problems else ""))
    rows = parsed.total
    return f"{source}: {rows} row{'s' if rows != 1 else ''}: " + ", ".join(parts) + f" ({backend} store" + \
        (", dry run: nothing written)" if dry_run else ")")


def export(pins: Dict[str, dict], fmt: str) -> str:
    """The pins of a store (uuid -> {"serial", ...}) as a pin file, ordered by instance UUID,
    so that export -> import into an empty store -> export gives the same bytes."""
    if fmt not in FORMATS:
        raise PinFileError(f"unknown format {fmt!r} (csv or json)")
    items = sorted((uuid, p["serial"]) for uuid, p in pins.items())
    if fmt == "json":
        return json.dumps([{"instance_uuid": u, "serial": s} for u, s in items], indent=2) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(items)
    return buf.getvalue()
