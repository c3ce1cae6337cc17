"""The one exception root of hookd and its direct children.

Every error hookd raises on purpose derives from HookdError, so the CLIs and the
daemon can turn any of them into one clear line without catching unrelated bugs.
This module must not import anything from hookd (everything imports it).
"""


class HookdError(Exception):
    """Root of every error hookd raises deliberately."""


class XmlError(HookdError):
    """A domain XML document that hookd refuses to read (malformed, hostile, not a domain)."""


class ConfigError(HookdError):
    """An invalid configuration; the message names file, line and reason."""

    def __init__(self, reason, path=None, line=None):
        self.reason = reason
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{reason}")


class ProtocolError(HookdError):
    """A malformed message on one of hookd's sockets."""


class StoreError(HookdError):
    """The state store (audit log, pins) could not be read or written."""
