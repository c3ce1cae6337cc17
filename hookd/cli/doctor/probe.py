"""doctor's libvirt probe: every libvirt call doctor makes, in a child process killed at
a deadline. Both halves live here: main(), the child, run as
`python3 -m hookd.cli.doctor.probe URI`, and run(), the parent, which reads the child's
output into a ProbeResult.

Why a child process: libvirt's keepalive is no answer here. virConnectOpen itself has
no timeout (a libvirtd that accepts the connection and then hangs, e.g. stopped or
deadlocked, blocks it forever), keepalive needs a running event loop and only starts
after the open, and virDomainGetXMLDesc blocks while that domain's hook runs. A thread
cannot be cancelled out of a blocked C call; a process can be killed. The child streams
one JSON line per result, so a hang on one domain still reports the others:

  {"t": "error", "stage": "import"|"open", "message": ...}   then nothing more
  {"t": "version", "lib": N, "hv": N}
  {"t": "count", "n": N}
  {"t": "domain", "name", "uuid", "active", "live", "inactive"[, "error"]}   one per domain
  {"t": "done"}

The child opens libvirt read-only and must stay that way: it never defines, starts or
changes a domain. It imports libvirt only inside probe(), so this module imports (and
is tested) without libvirt-python. It imports nothing of hookd and judges nothing: the
checks in hookd.cli.doctor.checks_libvirt read the ProbeResult. No module imports it at
its top (doctor's run_checks does when it runs), so `-m` finds it not yet imported.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

#: The directory holding the hookd package, so the child imports this same hookd.
_HOOKD_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# ------------------------------------------------------------------ the child

def encode(**fields) -> str:
    """One output line of the child."""
    return json.dumps(fields) + "\n"


def probe(uri: str, emit) -> None:
    """Report libvirt at `uri` through emit(**fields), one call per output line."""
    try:
        import libvirt
    except ImportError as err:
        emit(t="error", stage="import", message=str(err))
        return
    libvirt.registerErrorHandler(lambda *a: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as err:
        emit(t="error", stage="open", message=str(err).strip())
        return
    try:
        hv = conn.getVersion()
    except libvirt.libvirtError:
        hv = 0
    emit(t="version", lib=conn.getLibVersion(), hv=hv)
    doms = conn.listAllDomains(0)
    emit(t="count", n=len(doms))
    for d in doms:
        rec = {"name": d.name(), "uuid": d.UUIDString(), "active": bool(d.isActive())}
        try:
            rec["live"] = d.XMLDesc(0) if rec["active"] else None
            rec["inactive"] = d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if d.isPersistent() else None
        except libvirt.libvirtError as err:
            rec["error"] = str(err).strip()
        emit(t="domain", **rec)
    emit(t="done")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python3 -m hookd.cli.doctor.probe URI\n")
        return 2

    def emit(**fields) -> None:
        sys.stdout.write(encode(**fields))
        sys.stdout.flush()

    probe(argv[0], emit)
    return 0


# ----------------------------------------------------------------- the parent

@dataclass
class ProbeResult:
    error: Optional[str] = None          # could not talk to libvirt at all
    lib_version: Optional[int] = None
    hv_version: Optional[int] = None
    expected: Optional[int] = None       # domains listed
    domains: Optional[List[dict]] = None
    timed_out: bool = False


def take(res: ProbeResult, msg: dict) -> bool:
    """Fold one decoded output line into `res`; True once the child has said all it will."""
    t = msg.pop("t", None)
    if t == "error":
        res.error = (f"libvirt-python is not installed ({msg.get('message')})"
                     if msg.get("stage") == "import" else msg.get("message"))
        return True
    if t == "version":
        res.lib_version, res.hv_version = msg.get("lib"), msg.get("hv")
    elif t == "count":
        res.expected = msg.get("n")
    elif t == "domain":
        res.domains.append(msg)
    elif t == "done":
        return True
    return False


def take_lines(res: ProbeResult, buf: bytes):
    """Fold every whole line of `buf` into `res` (a line that is not JSON is skipped);
    returns (the unfinished rest, whether the child is done)."""
    done = False
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if take(res, msg):
            done = True
    return buf, done


def _child_env() -> dict:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _HOOKD_ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([_HOOKD_ROOT] + paths)
    return env


def run(uri: str, timeout: float) -> ProbeResult:
    """Probe libvirt at `uri` in a child process; whatever it reported by `timeout` seconds."""
    res = ProbeResult(domains=[])
    try:
        proc = subprocess.Popen([sys.executable, "-m", "hookd.cli.doctor.probe", uri],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=_child_env())
    except OSError as err:
        res.error = f"cannot start {sys.executable}: {err.strerror}"
        return res
    deadline = time.monotonic() + timeout
    buf = b""
    done = False
    try:
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                res.timed_out = True
                break
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            buf, done = take_lines(res, buf + chunk)
    finally:
        if proc.poll() is None:
            proc.kill()                  # our own child, by pid
        proc.wait()
        proc.stdout.close()
    if not done and not res.timed_out and res.error is None:
        res.error = f"the libvirt probe exited with status {proc.returncode} before finishing"
    return res


if __name__ == "__main__":
    sys.exit(main())
