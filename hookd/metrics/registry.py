"""The metric types and Prometheus' text exposition format (0.0.4), for hookd.metrics.

Owns Counter, Gauge, Histogram and Registry: an increment is a dict update and a call
of the registry's on_change (no I/O, no lock: one event loop), names are checked when a
metric is made (hookd_ prefix, lower case, counters ending in _total), and each metric
refuses series past its max_series (counted in Registry.dropped), so that no label can
grow a metric without bound. It renders text and does nothing else: no files, no
sockets, and no import of any other hookd module.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

#: A metric's series (label combinations) beyond this are dropped and counted.
MAX_SERIES = 200
#: Seconds (hook answers are milliseconds; the shim gives up after its timeout, 30 s by default).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_NAME = re.compile(r"^hookd_[a-z0-9_]+$")
_LABEL = re.compile(r"^[a-z_][a-z0-9_]*$")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metric:
    kind = "untyped"

    def __init__(self, registry: "Registry", name: str, help: str, labels: Sequence[str] = (),
                 max_series: int = MAX_SERIES):
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r}: must be hookd_ and lower case")
        if self.kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        for label in labels:
            if not _LABEL.match(label) or label == "le":
                raise ValueError(f"metric {name!r}: bad label name {label!r}")
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.max_series = max_series
        self._registry = registry
        #: An unlabelled series exists from the start, at 0.
        self._values: Dict[Tuple[str, ...], float] = {} if labels or self.kind == "histogram" else {(): 0.0}

    def _key_ok(self, key: tuple) -> bool:
        """Whether a new series may be made (checked only for keys not seen yet)."""
        if len(key) != len(self.labels):
            raise ValueError(f"{self.name}: labels {self.labels}, got {key!r}")
        if len(self._values) >= self.max_series:
            self._registry.dropped += 1
            return False
        return True

    def set(self, value: float, *labels: str) -> None:
        """Set a series (a gauge, or a counter whose total another object keeps)."""
        if labels not in self._values and not self._key_ok(labels):
            return
        if self._values.get(labels) != value:
            self._values[labels] = value
            self._registry.changed()

    def clear(self) -> None:
        self._values.clear()

    def value(self, *labels: str) -> Optional[float]:
        return self._values.get(labels)

    def lines(self) -> Iterable[str]:
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labels, key)} {_number(v)}"


class Counter(Metric):
    kind = "counter"

    def inc(self, *labels: str, n: float = 1.0) -> None:
        values = self._values
        if labels in values:
            values[labels] += n
        elif self._key_ok(labels):
            values[labels] = n
        else:
            return
        self._registry.changed()


class Gauge(Metric):
    kind = "gauge"

    def replace(self, series: Dict[Tuple[str, ...], float]) -> None:
        """All series at once (a per-domain state map); those beyond max_series dropped."""
        new: Dict[Tuple[str, ...], float] = {}
        for key, v in series.items():
            if len(new) >= self.max_series:
                self._registry.dropped += len(series) - len(new)
                break
            if len(key) != len(self.labels):
                raise ValueError(f"{self.name}: labels {self.labels}, got {key!r}")
            new[key] = v
        if new != self._values:
            self._values = new
            self._registry.changed()


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, registry: "Registry", name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS, max_series: int = MAX_SERIES):
        super().__init__(registry, name, help, labels, max_series)
        self.buckets = tuple(sorted(buckets))
        #: labels -> [count in each bucket (not cumulative), count above the last, sum]
        self._hist: Dict[Tuple[str, ...], List[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        h = self._hist.get(labels)
        if h is None:
            if not self._key_ok(labels):
                return
            h = self._hist[labels] = [0.0] * (len(self.buckets) + 2)
            self._values[labels] = 0.0      # counts the series for max_series
        h[bisect.bisect_left(self.buckets, value)] += 1     # le: value <= bound
        h[-1] += value
        self._registry.changed()

    def count(self, *labels: str) -> int:
        h = self._hist.get(labels)
        return 0 if h is None else int(sum(h[:-1]))

    def lines(self) -> Iterable[str]:
        for key, h in sorted(self._hist.items()):
            running = 0.0
            for bound, n in zip(self.buckets, h):
                running += n
                yield f"{self.name}_bucket{_labels(self.labels, key, f'le={_q(bound)}')} {_number(running)}"
            running += h[len(self.buckets)]
            yield f"{self.name}_bucket{_labels(self.labels, key, _INF)} {_number(running)}"
            yield f"{self.name}_sum{_labels(self.labels, key)} {_number(h[-1])}"
            yield f"{self.name}_count{_labels(self.labels, key)} {_number(running)}"


_INF = 'le="+Inf"'


def _q(bound: float) -> str:
    return '"' + repr(float(bound)) + '"'


class Registry:
    """The metrics of one process, rendered in the order they were made."""

    def __init__(self):
        self._metrics: List[Metric] = []
        self.dropped = 0
        #: Called on every change (the writer's wake-up); must be cheap and never raise.
        self.on_change: Optional[Callable[[], None]] = None

    def changed(self) -> None:
        cb = self.on_change
        if cb is not None:
            cb()

    def counter(self, name: str, help: str, labels: Sequence[str] = (), **kw) -> Counter:
        return self._add(Counter(self, name, help, labels, **kw))

    def gauge(self, name: str, help: str, labels: Sequence[str] = (), **kw) -> Gauge:
        return self._add(Gauge(self, name, help, labels, **kw))

    def histogram(self, name: str, help: str, labels: Sequence[str] = (), **kw) -> Histogram:
        return self._add(Histogram(self, name, help, labels, **kw))

    def _add(self, metric):
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name!r} made twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        out: List[str] = []
        for m in self._metrics:
            out.append(f"# HELP {m.name} {m.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(m.lines())
        return "\n".join(out) + "\n"
