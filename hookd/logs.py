"""Logging set-up shared by hookd's processes (the daemon and its libvirt worker): the
journal under systemd (one line per message, the priority from the level), stderr with
time and pid otherwise.

It owns handlers and format only; what is logged is each module's business.
"""

import logging
import os
import sys


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_systemd():
        try:
            from systemd.journal import JournalHandler
            handler = JournalHandler(SYSLOG_IDENTIFIER="hookd")
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("hookd: %(levelname)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s hookd[%(process)d] %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
