"""hookd.clock: every time hookd writes is UTC ISO 8601 with milliseconds, one fixed
width, so that sorting the text sorts the times."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from hookd.clock import iso_from_epoch, now_iso

FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def test_now_is_utc_with_milliseconds():
    before = dt.datetime.now(dt.timezone.utc)
    text = now_iso()
    after = dt.datetime.now(dt.timezone.utc)
    assert FORM.fullmatch(text), text
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.utcoffset() == dt.timedelta(0)
    # Milliseconds are truncated, never rounded up past the moment it was called.
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parsed <= after


@pytest.mark.parametrize("epoch,text", [
    (0, "1970-01-01T00:00:00.000+00:00"),
    (1700000000, "2023-11-14T22:13:20.000+00:00"),
    (1700000000.5, "2023-11-14T22:13:20.500+00:00"),
    (1700000000.1239, "2023-11-14T22:13:20.123+00:00"),
    (1796354925.123, "2026-12-04T03:28:45.123+00:00"),   # the docstring's example
])
def test_iso_from_epoch(epoch, text):
    assert iso_from_epoch(epoch) == text


def test_iso_from_epoch_is_utc_whatever_the_local_zone(monkeypatch):
    import time
    monkeypatch.setenv("TZ", "America/St_Johns")      # -03:30 / -02:30: no whole-hour luck
    time.tzset()
    try:
        assert iso_from_epoch(1700000000) == "2023-11-14T22:13:20.000+00:00"
        assert now_iso().endswith("+00:00")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_whole_seconds_keep_the_same_width():
    # isoformat() without timespec drops the fraction at .000000; a sort would then put
    # "...:20+00:00" after "...:20.500+00:00".
    assert len(iso_from_epoch(1700000000)) == len(iso_from_epoch(1700000000.5)) == 29


def test_text_order_is_time_order():
    epochs = [0, 0.001, 0.999, 1, 59.5, 60, 3599.999, 3600, 86399.9, 86400, 951782400, 1700000000,
              1700000000.01, 1700000000.1, 1700000001, 4102444800]
    texts = [iso_from_epoch(e) for e in epochs]
    assert sorted(texts) == texts
    assert len(set(texts)) == len(texts)
    assert sorted(texts, reverse=True) == [iso_from_epoch(e) for e in sorted(epochs, reverse=True)]
