"""What nova-compute sees through hookd's proxy when hookd stalls (SIGSTOP) or dies (SIGKILL).

Nova never enables libvirt's client keepalive, so nothing on the client side bounds a
call: what bounds it is hookd dying, or libvirtd dropping the proxy's upstream
connection (libvirtd's own keepalive, which it starts only for clients that run an
event loop). This measures, against a real namespaced libvirtd (tests/harness):

* the client as Nova has it: libvirt-python, libvirt's default event loop running in a
  thread (virEventRegisterDefaultImpl + virEventRunDefaultImpl, as nova.virt.libvirt.host
  does), a close callback, and no setKeepAlive; beside it, in a child process, a plain
  script client (no event loop, no keepalive);
* hookd started on sockets this process holds across hookd's deaths and restarts, as
  systemd's hookd.socket and hookd-proxy.socket hold them (tests/integration/activation);
* systemd's watchdog emulated with hookd.service's own WatchdogSec= and RestartSec=:
  no WATCHDOG=1 for WatchdogSec, then SIGABRT followed by SIGCONT (systemd's kill sends
  SIGCONT after the signal, so a stopped process dies too), and a start RestartSec later.

Scenarios, each on a fresh connection:

* stall, short: SIGSTOP, a call, SIGCONT after STALL_SHORT_S;
* stall, long, no watchdog (hookd outside systemd): SIGSTOP, a call, waited for CAP_S
  (reported ">CAP_S" if still blocked), when libvirtd dropped the proxy's upstream (its
  own debug log line, rpc.keepalive), then SIGCONT and what the call does then;
* stall under the watchdog: SIGSTOP right after a WATCHDOG=1 (the worst case), a call, and
  a new connection made during the stall;
* SIGKILL and a restart RestartSec later on the held socket: the old connection's call and
  close callback, a new connection made right after the kill;
* SIGKILL without the held socket (hookd binding its own): a new connection meanwhile.

Not a test: it prints figures; ``run()`` returns them for bench/run.py. Needs root and
Debian's libvirt/QEMU (like tests/integration). Takes about 3.5 minutes, most of it waiting
for the stalls it measures.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.libvirt_host import LibvirtHost  # noqa: E402
from tests.harness.activation import ActivatedHookd, kill_hookd, reap_orphans  # noqa: E402
from tests.harness.hookd_proc import HookdProcess  # noqa: E402

PY = "/usr/bin/python3"
#: The longest any one wait here may take; a call still blocked then is reported as ">CAP_S s".
CAP_S = 60.0
STALL_SHORT_S = 5.0
UNIT = REPO / "packaging" / "systemd" / "hookd.service"

#: The plain script client: one connection, no event loop, no keepalive. Says "ready",
#: makes one call when told "go" and reports it as JSON (monotonic times: system-wide).
PLAIN_CLIENT = r"""
import json, sys, time
import libvirt
libvirt.registerErrorHandler(lambda *_: None, None)
conn = libvirt.open(sys.argv[1])
conn.listAllDomains(0)
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.monotonic()
    try:
        conn.listAllDomains(0)
        out = {"ok": True}
    except libvirt.libvirtError as err:
        out = {"ok": False, "error": str(err)}
    out.update(start=t0, end=time.monotonic())
    print(json.dumps(out), flush=True)
"""


def unit_seconds(key: str) -> float:
    """WatchdogSec= / RestartSec= of the shipped hookd.service, in seconds."""
    m = re.search(rf"^{key}=(\d+(?:\.\d+)?)(ms|s|min)?$", UNIT.read_text(), re.M)
    if not m:
        raise RuntimeError(f"{UNIT} has no {key}=")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, None: 1.0, "min": 60.0}[m.group(2)]


class Call(threading.Thread):
    """fn() in a thread, started at once: a call that blocks for ever costs a bounded wait."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.t0 = self.t1 = None
        self.start()

    def run(self) -> None:
        self.t0 = time.monotonic()
        try:
            self.result = self.fn()
        except Exception as err:        # libvirtError: the figure reports it
            self.error = err
        self.t1 = time.monotonic()

    def outcome(self) -> str:
        if self.t1 is None:
            return "still blocked"
        return "completed" if self.error is None else f"failed: {self.error}"


def _error_text(call: Call) -> str:
    return call.outcome().replace("\n", " ")


class NovaLikeClients:
    """libvirt's default event loop in a thread of this process, as in nova-compute."""

    def __init__(self):
        import libvirt
        self.libvirt = libvirt
        libvirt.virEventRegisterDefaultImpl()
        libvirt.registerErrorHandler(lambda *_: None, None)     # errors are reported as figures
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="libvirt-events", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.libvirt.virEventRunDefaultImpl()

    def open(self, uri: str):
        conn = self.libvirt.open(uri)
        closed = {}
        conn.registerCloseCallback(lambda _c, reason, _o: closed.setdefault("t", time.monotonic()), None)
        conn.closed = closed
        return conn

    def close(self) -> None:
        self._stop.set()
        timer = self.libvirt.virEventAddTimeout(0, lambda *_: None, None)
        self._thread.join(10)
        self.libvirt.virEventRemoveTimeout(timer)


class PlainClient:
    def __init__(self, uri: str):
        self.proc = subprocess.Popen([PY, "-c", PLAIN_CLIENT, uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the plain client did not connect")
        self.answer: dict = {}
        self._reader = None

    def call(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

        def read():
            line = self.proc.stdout.readline()
            if line:
                self.answer.update(json.loads(line))
        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def wait(self, timeout: float) -> dict:
        self._reader.join(timeout)
        return self.answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


#: libvirtd's keepalive dropping a client that stopped answering (rpc.keepalive at debug level).
_DROP_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\+0000: .*No response from client \S+ "
                      r"after (\d+) keepalive messages in (\d+) seconds")


def log_keepalive(host: LibvirtHost) -> None:
    """Have libvirtd log its keepalive at debug level, which says when it drops a client.
    Only the log changes: the keepalive itself stays libvirtd.conf's default (5 s, 5 pings)."""
    conf = host.etc_dir / "libvirtd.conf"
    text = conf.read_text()
    for old, new in (('log_filters = "2:daemon.libvirtd"', 'log_filters = "2:daemon.libvirtd 1:rpc.keepalive"'),
                     ('log_outputs = "2:file:', 'log_outputs = "1:file:')):
        if old not in text:
            raise RuntimeError(f"{conf} has no {old!r}: the harness changed")
        text = text.replace(old, new)
    conf.write_text(text)


def keepalive_drops(host: LibvirtHost, since_wall: float) -> list:
    """(wall time, libvirtd's own idle seconds) of every client libvirtd dropped since since_wall."""
    import datetime
    drops = []
    try:
        lines = host.libvirtd_log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return drops
    for line in lines:
        m = _DROP_RE.match(line)
        if m:
            wall = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            if wall >= since_wall:
                drops.append((wall, int(m.group(3))))
    return drops


def _r(x: float | None, digits: int = 3):
    return None if x is None else round(x, digits)


class Watchdog(threading.Thread):
    """systemd's part of WatchdogSec= + Restart=on-failure for one ActivatedHookd, for one kill."""

    def __init__(self, d: ActivatedHookd, watchdog_s: float, restart_s: float, usec: int):
        super().__init__(daemon=True)
        self.d, self.watchdog_s, self.restart_s, self.usec = d, watchdog_s, restart_s, usec
        self.killed = self.ready = None
        self._cancel = threading.Event()
        self.start()

    def run(self) -> None:
        armed = time.monotonic()
        while not self._cancel.is_set():
            last = max(self.d.watchdog_pings(), default=armed)
            if time.monotonic() - last >= self.watchdog_s:
                self.killed = time.monotonic()
                # WatchdogSignal= (SIGABRT), then SIGCONT as systemd's kill_and_sigcont() sends;
                # TimeoutAbortSec= (TimeoutStopSec=20s) bounds the wait.
                self.d.kill(signal.SIGABRT, cont=True, timeout=20, reap=False)
                if self._cancel.wait(self.restart_s):
                    return
                self.d.start(watchdog_usec=self.usec)
                self.ready = time.monotonic()
                return
            self._cancel.wait(0.02)

    def cancel(self) -> None:
        self._cancel.set()
        self.join(30)


def run(cap_s: float = CAP_S, short_s: float = STALL_SHORT_S) -> dict:
    import grp
    watchdog_s, restart_s = unit_seconds("WatchdogSec"), unit_seconds("RestartSec")
    usec = int(watchdog_s * 1e6)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="hk-stall-", dir="/tmp"))
    host = d = own = clients = plain = None
    conns: list = []
    res: dict = {"watchdog_sec": watchdog_s, "restart_sec": restart_s, "cap_s": cap_s}
    try:
        host = LibvirtHost(tmp / "h", "bench")
        log_keepalive(host)
        host.start()
        d = ActivatedHookd(tmp / "d", libvirt_socket=host.socket_path)
        d.follow(host)
        d.hold_sockets(proxy_gid=grp.getgrnam("libvirt").gr_gid)
        d.start(watchdog_usec=usec)
        uri = f"qemu+unix:///system?socket={d.proxy_socket}"
        clients = NovaLikeClients()

        def fresh():
            c = clients.open(uri)
            c.listAllDomains(0)
            conns.append(c)
            return c

        starts = []
        for _ in range(3):                           # hookd's own start-up: exec to READY=1
            d.stop()
            t0 = time.monotonic()
            d.start(watchdog_usec=usec)
            starts.append(time.monotonic() - t0)
        res["hookd_start_to_ready_s"] = _r(sorted(starts)[1])

        # -- stall, short: the call waits for SIGCONT, then completes.
        c = fresh()
        d.signal(signal.SIGSTOP)
        call = Call(lambda: c.listAllDomains(0))
        time.sleep(short_s)                          # the stall being measured
        resumed = time.monotonic()
        d.signal(signal.SIGCONT)
        call.join(cap_s)
        res["stall_short"] = {"stall_s": short_s, "call": _error_text(call),
                              "call_took_s": _r((call.t1 or time.monotonic()) - call.t0),
                              "after_sigcont_s": _r((call.t1 or time.monotonic()) - resumed)}

        # -- stall, long, no watchdog (hookd outside systemd): blocked for the whole cap?
        d.stop()
        d.start()                                    # no WATCHDOG_USEC: nothing kills it
        c = fresh()
        plain = PlainClient(uri)
        d.signal(signal.SIGSTOP)
        stopped, stopped_wall = time.monotonic(), time.time()
        call = Call(lambda: c.listAllDomains(0))
        plain.call()
        call.join(cap_s)
        blocked_at_cap = call.t1 is None
        resumed = time.monotonic()
        d.signal(signal.SIGCONT)
        call.join(cap_s)
        pl = plain.wait(cap_s)
        drops = keepalive_drops(host, stopped_wall)
        new = Call(lambda: fresh().getLibVersion())
        new.join(cap_s)
        res["stall_long_no_watchdog"] = {
            "stalled_s": _r(resumed - stopped, 1),
            "call_blocked_at_cap": blocked_at_cap,
            # Which clients libvirtd dropped during the stall: the proxy's upstream for the
            # Nova-like client; the plain client's (no keepalive asked) is never dropped.
            "libvirtd_drops_during_stall": len(drops),
            "libvirtd_dropped_upstream_after_s": _r(drops[0][0] - stopped_wall, 1) if drops else f">{cap_s:.0f}",
            "libvirtd_idle_s_at_drop": drops[0][1] if drops else None,
            "call_after_sigcont": _error_text(call),
            "call_after_sigcont_s": _r((call.t1 or time.monotonic()) - resumed),
            "close_callback_after_sigcont_s": _r(c.closed["t"] - resumed) if "t" in c.closed else None,
            "plain_client_call": (("completed" if pl.get("ok") else f"failed: {pl.get('error')}")
                                  if pl else "still blocked"),
            "plain_client_call_after_sigcont_s": _r(pl["end"] - resumed) if pl else None,
            "new_connection_after_sigcont": _error_text(new),
            "new_connection_s": _r((new.t1 or time.monotonic()) - new.t0)}
        plain.stop()
        plain = None

        # -- stall under the watchdog, stopped right after a ping (the worst case).
        d.stop()
        d.start(watchdog_usec=usec)
        c = fresh()
        seen = len(d.watchdog_pings())
        deadline = time.monotonic() + watchdog_s
        while len(d.watchdog_pings()) == seen and time.monotonic() < deadline:
            time.sleep(0.005)
        d.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        since_ping = stopped - max(d.watchdog_pings())
        dog = Watchdog(d, watchdog_s, restart_s, usec)
        call = Call(lambda: c.listAllDomains(0))
        time.sleep(1.0)                               # a second client arrives during the stall
        new = Call(lambda: fresh().getLibVersion())
        call.join(watchdog_s + cap_s)
        new.join(watchdog_s + restart_s + cap_s)
        dog.join(cap_s)
        reap_orphans(d)                                # the killed hookd's worker (systemd: its cgroup)
        res["stall_watchdog"] = {
            "stopped_after_ping_s": _r(since_ping),
            "killed_after_s": _r(dog.killed - stopped, 2) if dog.killed else None,
            "call": _error_text(call),
            "call_after_stall_start_s": _r((call.t1 or time.monotonic()) - stopped, 2),
            "close_callback_after_stall_start_s": _r(c.closed["t"] - stopped, 2) if "t" in c.closed else None,
            "hookd_ready_after_s": _r(dog.ready - stopped, 2) if dog.ready else None,
            "new_connection": _error_text(new),
            "new_connection_made_at_s": _r(new.t0 - stopped, 2),
            "new_connection_done_after_s": _r((new.t1 or time.monotonic()) - stopped, 2)}
        dog.cancel()

        # -- SIGKILL, restarted RestartSec later on the held socket (systemd's Restart=on-failure).
        c = fresh()
        killed = time.monotonic()
        d.kill(signal.SIGKILL, reap=False)
        call = Call(lambda: c.listAllDomains(0))
        new = Call(lambda: fresh().getLibVersion())
        time.sleep(restart_s)                         # RestartSec=
        restart = time.monotonic()
        d.start(watchdog_usec=usec)
        ready = time.monotonic()
        call.join(cap_s)
        new.join(cap_s)
        reap_orphans(d)                                # the killed hookd's worker (systemd: its cgroup)
        res["kill_held_socket"] = {
            "old_connection_call": _error_text(call),
            "old_connection_call_fails_after_s": _r((call.t1 or time.monotonic()) - killed),
            "close_callback_after_s": _r(c.closed["t"] - killed) if "t" in c.closed else None,
            "restart_after_s": _r(restart - killed, 2), "hookd_ready_after_s": _r(ready - killed, 2),
            "new_connection": _error_text(new),
            "new_connection_done_after_s": _r((new.t1 or time.monotonic()) - killed, 2)}

        # -- SIGKILL without a held socket: hookd binds its own proxy socket.
        own = HookdProcess(tmp / "d", proxy=True, libvirt_socket=host.socket_path, name="own")
        own.follow(host)
        own.start()
        own_uri = f"qemu+unix:///system?socket={own.proxy_socket}"
        conns.append(clients.open(own_uri))
        killed = time.monotonic()
        kill_hookd(own, signal.SIGKILL, reap=False)
        new = Call(lambda: clients.open(own_uri))
        new.join(cap_s)
        reap_orphans(own)
        res["kill_own_socket"] = {"new_connection": _error_text(new),
                                  "new_connection_fails_after_s": _r((new.t1 or time.monotonic()) - killed)}
    finally:
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        if plain is not None:
            plain.stop()
        if own is not None:
            own.stop()
            reap_orphans(own)
        if d is not None:
            d.stop()
            d.release()
        if clients is not None:
            clients.close()
        if host is not None:
            host.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def main() -> int:
    r = run()
    short, long_, dog, kill, own = (r["stall_short"], r["stall_long_no_watchdog"], r["stall_watchdog"],
                                    r["kill_held_socket"], r["kill_own_socket"])
    print("What a Nova-like libvirt client (event loop, no keepalive) sees through hookd's proxy:")
    print(f"  SIGSTOP {short['stall_s']:.0f} s, then SIGCONT: the call {short['call']} after "
          f"{short['call_took_s']} s ({short['after_sigcont_s']} s after SIGCONT)")
    print(f"  SIGSTOP, no watchdog: the call blocked at the {r['cap_s']:.0f} s cap: {long_['call_blocked_at_cap']}; "
          f"libvirtd dropped the proxy's upstream after {long_['libvirtd_dropped_upstream_after_s']} s; "
          f"after SIGCONT the call {long_['call_after_sigcont']} in {long_['call_after_sigcont_s']} s "
          f"(a plain client without an event loop: {long_['plain_client_call']})")
    print(f"  SIGSTOP under WatchdogSec={r['watchdog_sec']:.0f} (stopped {dog['stopped_after_ping_s']} s after a ping): "
          f"killed after {dog['killed_after_s']} s, the call {dog['call']} after {dog['call_after_stall_start_s']} s; "
          f"a connection made during the stall completed after {dog['new_connection_done_after_s']} s")
    print(f"  SIGKILL, socket held, RestartSec={r['restart_sec']:.0f}: the old connection's call "
          f"{kill['old_connection_call']} after {kill['old_connection_call_fails_after_s']} s; a new connection "
          f"{kill['new_connection']} after {kill['new_connection_done_after_s']} s "
          f"(hookd start to READY {r['hookd_start_to_ready_s']} s)")
    print(f"  SIGKILL, hookd's own socket: a new connection {own['new_connection']} after "
          f"{own['new_connection_fails_after_s']} s")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
