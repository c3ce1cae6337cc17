"""`hookctl install-hook`: the qemu hook shim and its settings file.

Owns the shim's settings format (render_shim_settings writes it, parse_shim_settings
reads it exactly as hooks/hookd-shim.c does), where the compiled shim and its C source
are looked for, building it with the system's C compiler, and installing both files
atomically into libvirt's hooks directory. It must not touch /etc/libvirt/hooks/qemu
(the admin's), signal libvirtd, or decide anything about serials; doctor reads the
settings through parse_shim_settings so the two never disagree.
"""

from __future__ import annotations

import os
from typing import Optional

from hookd.cli.common import EXIT_OK, CliError

SHIM_NAME = "50-hookd"
#: Where the packages put the compiled shim (Debian's /usr/lib, Fedora's /usr/libexec).
SHIM_BINARY_PATHS = ("/usr/lib/hookd/hookd-shim", "/usr/libexec/hookd/hookd-shim")
#: The shim's C source: a source checkout's hooks/, or the copy a wheel carries.
SHIM_SOURCE_PATHS = (
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hooks", "hookd-shim.c"),
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "hookd-shim.c"),
)
SHIM_CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong")
#: struct sockaddr_un's sun_path, NUL included.
SUN_PATH_MAX = 108


def render_shim_settings(*, socket_path: str, timeout: float, on_unreachable: str) -> str:
    """The shim's settings file ("<hook path>.conf"; parsed by hooks/hookd-shim.c)."""
    if not socket_path.startswith("/") or any(c in socket_path for c in "\n\r\0#"):
        raise CliError(f"--socket must be an absolute path, got {socket_path!r}")
    if len(socket_path.encode()) >= SUN_PATH_MAX or socket_path != socket_path.strip():
        raise CliError(f"--socket must be under {SUN_PATH_MAX} bytes without surrounding blanks "
                       f"(a UNIX socket path), got {socket_path!r}")
    if not 0.1 <= timeout <= 300:
        raise CliError(f"--timeout must be between 0.1 and 300 seconds, got {timeout:g}")
    if on_unreachable not in ("allow", "deny"):
        raise CliError(f"--on-unreachable must be allow or deny, got {on_unreachable!r}")
    return ("# hookd's qemu hook settings, written by `hookctl install-hook`; the hook beside\n"
            "# this file reads them on every call (libvirt gives hooks no other configuration).\n"
            f"socket = {socket_path}\n"
            f"timeout = {timeout:g}\n"
            f"on_unreachable = {on_unreachable}\n")


#: What the shim uses when its settings file or a key is missing (hooks/hookd-shim.c).
SHIM_DEFAULTS = {"socket": "/run/hookd/hookd.sock", "timeout": 5.0, "on_unreachable": "allow"}


def parse_shim_settings(text: str, source: str = "settings") -> dict:
    """Read a shim settings file the way hooks/hookd-shim.c does (same keys, ranges, errors)."""
    values = dict(SHIM_DEFAULTS)
    if "\0" in text:
        raise CliError(f"{source} hold a NUL byte")
    if len(text.encode("utf-8", "surrogateescape")) > 4096:
        raise CliError(f"{source} are over 4096 bytes")
    for no, line in enumerate(text.split("\n"), 1):
        line = line.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not eq:
            raise CliError(f"{source} line {no}: expected key = value")
        if key == "socket":
            if not value.startswith("/") or len(value.encode()) >= SUN_PATH_MAX:
                raise CliError(f"{source} line {no}: socket must be an absolute path of at most "
                               f"{SUN_PATH_MAX - 1} bytes")
            values["socket"] = value
        elif key == "timeout":
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0.1 <= seconds <= 300:
                raise CliError(f"{source} line {no}: timeout must be 0.1 to 300 seconds")
            values["timeout"] = seconds
        elif key == "on_unreachable":
            if value not in ("allow", "deny"):
                raise CliError(f"{source} line {no}: on_unreachable must be allow or deny")
            values["on_unreachable"] = value
        else:
            raise CliError(f"{source} line {no}: unknown key")
    return values


def build_shim(output: str, source: Optional[str] = None, extra_flags: tuple = ()) -> str:
    """Compile the C shim into `output` with the system's C compiler; returns `output`."""
    import shutil
    import subprocess
    if source is None:
        source = next((p for p in SHIM_SOURCE_PATHS if os.path.isfile(p)), None)
        if source is None:
            raise CliError(f"the shim's C source is missing (looked in {', '.join(SHIM_SOURCE_PATHS)})")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which(cc) is None:
        raise CliError("no compiled hook shim is installed (looked in "
                       f"{', '.join(SHIM_BINARY_PATHS)}) and no C compiler (cc) is there to build "
                       f"{source}: install gcc (or the hookd package), or pass --binary")
    res = subprocess.run([cc, *SHIM_CFLAGS, *extra_flags, "-o", output, source],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    if res.returncode != 0:
        first = next((line for line in res.stdout.splitlines() if "error" in line), res.stdout.strip()[:200])
        raise CliError(f"building the shim with {cc} failed: {first}")
    return output


def _write_atomically(target: str, data: bytes, mode: int) -> None:
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)      # atomic: libvirt never runs a half-written hook
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CliError(f"cannot write {target}: {err.strerror}") from err


def cmd_install_hook(args) -> int:
    import tempfile
    settings = render_shim_settings(socket_path=args.socket, timeout=args.timeout,
                                    on_unreachable=args.on_unreachable)
    if not os.path.isdir(args.dir):
        raise CliError(f"{args.dir} is not a directory")
    if os.path.basename(os.path.normpath(args.dir)) == "hooks" and args.name == "qemu":
        raise CliError("refusing to write /etc/libvirt/hooks/qemu: it belongs to the admin; use qemu.d/")
    if args.name.endswith(".conf") or "/" in args.name:
        raise CliError(f"--name must be a plain file name not ending in .conf, got {args.name!r}")
    with tempfile.TemporaryDirectory(prefix="hookd-shim-") as tmp:
        binary = args.binary or next((p for p in SHIM_BINARY_PATHS if os.path.isfile(p)), None)
        if binary is None:
            binary = build_shim(os.path.join(tmp, "hookd-shim"))
        try:
            with open(binary, "rb") as f:
                code = f.read()
        except OSError as err:
            raise CliError(f"cannot read the compiled shim {binary}: {err.strerror}") from err
        if not code.startswith(b"\x7fELF"):
            raise CliError(f"{binary} is not a compiled shim (no ELF header)")
    target = os.path.join(args.dir, args.name)
    # Settings first: the hook must never run without the settings it was installed with.
    _write_atomically(target + ".conf", settings.encode(), 0o644)
    _write_atomically(target, code, 0o755)
    print(f"installed {target} and {target}.conf (socket {args.socket}, timeout {args.timeout:g}s, "
          f"on_unreachable {args.on_unreachable}); libvirtd sees a new hook file only after "
          f"a restart or SIGHUP")
    return EXIT_OK
