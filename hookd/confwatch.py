"""Watching the configuration directory for changes: inotify(7) through libc, on the
daemon's event loop.

Owns the inotify descriptor, one watch on the directory and one on each subdirectory
(conf.d, also when it is created later), decoding the kernel's `struct inotify_event`
records, and calling back with what changed. It decides nothing: which changes make a
reload, and debouncing them, is hookd.daemon's.

Why not pyinotify: RHEL 9 ships it in neither BaseOS nor AppStream, it needs
pyasyncore on Python >= 3.12, and hookd needs five event bits on two directories. libc's
inotify_init1/inotify_add_watch are on every Linux hookd targets. It never blocks: the
descriptor is non-blocking and read only when the loop says it is readable.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
from typing import Callable, Dict, Optional

from hookd.errors import HookdError

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What an editor's save, a package's conffile update or an `rm` does to a config file.
WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE
NAMES = ((IN_CLOSE_WRITE, "IN_CLOSE_WRITE"), (IN_MOVED_TO, "IN_MOVED_TO"), (IN_MOVED_FROM, "IN_MOVED_FROM"),
         (IN_DELETE, "IN_DELETE"), (IN_CREATE, "IN_CREATE"), (IN_DELETE_SELF, "IN_DELETE_SELF"),
         (IN_Q_OVERFLOW, "IN_Q_OVERFLOW"), (IN_ISDIR, "IN_ISDIR"))
#: struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len] (NUL-padded).
EVENT = struct.Struct("=iIII")
READ_SIZE = 64 * 1024

#: on_change(what, path, is_dir): what is e.g. "IN_CLOSE_WRITE" or "IN_CREATE|IN_ISDIR".
OnChange = Callable[[str, str, bool], None]


class WatchError(HookdError):
    """The directory cannot be watched (no inotify, a limit reached, no such directory)."""


def mask_name(mask: int) -> str:
    return "|".join(name for bit, name in NAMES if mask & bit) or hex(mask)


def parse_events(data: bytes):
    """(wd, mask, name) for each record in what one read() returned."""
    offset = 0
    while offset + EVENT.size <= len(data):
        wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
        offset += EVENT.size
        name = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        yield wd, mask, os.fsdecode(name)


_libc = None


def _lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = lib
    return _libc


class ConfigWatch:
    """Watches `directory` and its subdirectories (one level: conf.d) until close()."""

    def __init__(self, directory: str, on_change: OnChange):
        self.directory = directory
        self._on_change = on_change
        self._fd: Optional[int] = None
        self._dirs: Dict[int, str] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise WatchError(f"inotify_init1: {os.strerror(err)}")
        self._fd, self._loop = fd, loop
        try:
            self._add(self.directory)
            for entry in os.scandir(self.directory):
                if entry.is_dir(follow_symlinks=False):
                    self._add(entry.path)
        except (OSError, WatchError):
            self.close()
            raise
        loop.add_reader(fd, self._readable)

    def _add(self, path: str) -> None:
        wd = _lib().inotify_add_watch(self._fd, os.fsencode(path), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            hint = " (fs.inotify.max_user_watches)" if err == errno.ENOSPC else ""
            raise WatchError(f"cannot watch {path}: {os.strerror(err)}{hint}")
        self._dirs[wd] = path

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:
            raise WatchError(f"reading inotify events: {err}") from err
        for wd, mask, name in parse_events(data):
            if mask & IN_IGNORED:
                self._dirs.pop(wd, None)       # its directory is gone
                continue
            if mask & IN_Q_OVERFLOW:
                # Events were lost: something changed, which is all a reload needs.
                self._on_change(mask_name(mask), self.directory, True)
                continue
            parent = self._dirs.get(wd)
            if parent is None:
                continue
            path = os.path.join(parent, name) if name else parent
            is_dir = bool(mask & IN_ISDIR)
            if is_dir and mask & (IN_CREATE | IN_MOVED_TO) and parent == self.directory:
                try:
                    self._add(path)            # conf.d created after start
                except WatchError:
                    pass                       # gone again already, or a limit: SIGHUP still works
            self._on_change(mask_name(mask), path, is_dir)

    def close(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None
        self._dirs.clear()
