"""The compiled hook shim as the tests run it: built once with AddressSanitizer and
UndefinedBehaviorSanitizer, so every test that starts a guest also checks the shim's
memory safety.

libvirt gives a hook only PATH, HOME and LC_ALL, so no ASAN_OPTIONS reach it: the
sanitizers' defaults apply (a report on stderr and a non-zero exit), which libvirt
turns into a failed start that names the report; -fno-sanitize-recover makes
undefined behaviour fatal too. The build is cached by the source's hash.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess

from tests.harness.run import REPO

SOURCE = REPO / "hooks" / "hookd-shim.c"
SANITIZE_FLAGS = ("-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=all")


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("HOOKD_TEST_CACHE", "/var/cache/hookd-tests")) / "shim"


def build(flags=SANITIZE_FLAGS, *, extra_sources=(), name: str = "hookd-shim-asan",
          cc: str = "gcc") -> pathlib.Path:
    """Compile hooks/hookd-shim.c, or extra_sources (which #include it), with `flags`;
    cached by content, compiler and flags."""
    h = hashlib.sha256(" ".join((cc, *flags)).encode())
    for src in (SOURCE, *extra_sources):
        h.update(pathlib.Path(src).read_bytes())
    out = _cache_dir() / f"{name}-{h.hexdigest()[:16]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        res = subprocess.run([cc, *flags, "-o", str(tmp), *map(str, extra_sources or (SOURCE,))],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"building the shim failed:\n{res.stderr}"
        os.replace(tmp, out)
    return out


def sanitized_shim() -> pathlib.Path:
    return build()
