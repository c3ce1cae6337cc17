"""hookd's clock: every time hookd writes (audit rows, pins, etcd values) is UTC ISO 8601
with milliseconds, so that the text sorts as the time does.

It owns the format and nothing else; it must not import anything from hookd.
"""

import datetime as _dt


def now_iso() -> str:
    """Now, e.g. 2026-12-04T03:28:45.123+00:00."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def iso_from_epoch(epoch: float) -> str:
    """A Unix time in the same form."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).isoformat(timespec="milliseconds")
