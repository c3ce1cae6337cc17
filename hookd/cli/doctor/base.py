"""What every doctor check shares: the three statuses, the Check record and its one
output line, and the small formatters the findings use.

It must not check anything itself, and imports nothing of hookd: every checks module
and the package's run_checks build on it.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import dataclass
from typing import List, Optional

OK, WARN, FAIL = "OK", "WARN", "FAIL"
#: How many domain names a finding lists before "and N more".
NAMES_SHOWN = 5


@dataclass
class Check:
    status: str
    check: str
    finding: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.finding}"
        return f"{text}; {self.fix}" if self.fix else text


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def name_list(names: List[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def fmt_version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def socket_answers(path: str, timeout: float = 2.0) -> Optional[str]:
    """None if something accepts connections at `path`, else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot stat: {err.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return "exists but is not a socket"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
    except OSError as err:
        return f"connect failed: {err.strerror or err}"
    return None
