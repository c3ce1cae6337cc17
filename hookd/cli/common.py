"""What every hookctl command shares: exit codes, CliError, reading an input file,
loading the configuration named by --config, and asking the running daemon.

It owns no command and no output format, and must not import any other hookd.cli
module (the command modules and doctor import it; a way back would be a circle).
"""

from __future__ import annotations

import sys

from hookd.errors import HookdError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CliError(HookdError):
    """A problem with what the operator asked for (a file, an argument)."""


def read_input(path: str, what: str = "XML") -> bytes:
    """Read a file or stdin ("-"), bounded by hookd's XML size limit."""
    from hookd.xml.safe import MAX_XML_BYTES
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_XML_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_XML_BYTES + 1)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from err
    return data


def load_cli_config(args):
    """The configuration --config names (default /etc/hookd/hookd.conf plus conf.d/)."""
    from hookd.config import load_config
    return load_config(args.config)

