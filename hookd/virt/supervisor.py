"""The daemon's side of the libvirt worker (hookd.virt.worker).

The worker process holds hookd's own libvirt connection (events, reconciler), so
that the process serving hooks never makes a blocking libvirt call: while a qemu
hook runs, libvirt locks its domain and even list calls, and the hook is waiting
on this daemon. This module owns spawning the worker (with one end of a
socketpair, a hookd.ipc.channel of hookd.ipc.messages both ways), restarting it with backoff when it
dies, stopping it by pid, forwarding hook notes, reloads and reconcile requests,
keeping the latest status it reported, writing the audit rows it sends (the
daemon stays the audit log's single writer) through the boot ledger (hookd.ledger:
lifecycle rows and resyncs, so that each boot is recorded once), and answering its
pin lookups (the daemon owns the pin store).

Nothing here may block or wait on the worker without a bound: the worker is
best-effort, and hooks and the proxy keep working while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

from hookd.ipc import messages as m
from hookd.ipc.channel import Channel, ChannelClosed, RequestTimeout
from hookd.errors import ProtocolError
from hookd.stores.audit import COLUMNS
from hookd.ledger import BootLedger, RunningBoot, close_row, observe_row

log = logging.getLogger("hookd.virt.supervisor")

#: Restart delays after consecutive failures: 1, 2, 4 ... 60 s. A worker that ran
#: this long counts as healthy again, and the next failure starts over at 1 s.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 5.0
#: `hookctl reconcile` waits up to 120 s by default; answer before it gives up.
RECONCILE_TIMEOUT_S = 110.0

_ROW_KEYS = frozenset(COLUMNS)
_DAEMON_ONLY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                              "LISTEN_FDNAMES"})


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class WorkerSupervisor:
    def __init__(self, config_path: Optional[str], audit):
        self.config_path = config_path
        self.audit = audit
        self._proc: Optional[subprocess.Popen] = None
        self._channel: Optional[Channel] = None
        self._reader_task: Optional[asyncio.Task] = None
        self._pidfd: Optional[int] = None
        self._poll_handle: Optional[asyncio.TimerHandle] = None
        self._exited: Optional[asyncio.Event] = None
        self._started_at = 0.0
        self._closing = False
        self._restart_handle: Optional[asyncio.TimerHandle] = None
        self._spawning: Optional[asyncio.Task] = None
        self._failures = 0
        self.restarts = 0
        self._down_reason: Optional[str] = "not started"
        #: What the worker sends: message class -> handler (its replies go to our requests).
        self._handlers = {m.AuditRow: self._on_audit, m.Resync: self._on_resync,
                          m.WorkerStatus: self._on_status, m.PinRequest: self._on_pin}
        #: The daemon's pin lookup (hookd.decision.DecisionService.lookup): the worker asks
        #: for pins through us, so the daemon stays the pin store's one owner.
        self.lookup_pin: Optional[Callable[[str], Optional[str]]] = None
        #: Open boots of this host, from the audit log: every STARTED/STOPPED row and
        #: every resync the worker sends goes through it, so each boot is recorded once.
        self.ledger = BootLedger.from_rows(audit.latest_lifecycle())
        self.resyncs = 0
        self._domains: dict = {}
        self._reported: dict = {
            "events": {"uri": None, "connected": False, "reconnects": 0, "events": 0, "last_error": None},
            "reconcile": {"sweeps": 0, "fixed": 0, "last_sweep": None},
        }

    # ------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._channel is not None

    async def start(self) -> None:
        self._closing = False
        await self._spawn()

    async def _spawn(self) -> None:
        self._restart_handle = None
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "hookd.virt.worker", "--fd", str(theirs.fileno())]
        if self.config_path:
            argv += ["--config", self.config_path]
        # systemd's notify, watchdog and socket-activation variables are the daemon's alone.
        env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ONLY_ENV}
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), close_fds=True,
                                    env=env)
        except OSError as err:
            ours.close()
            self._down_reason = f"cannot start: {err}"
            log.error("cannot start the libvirt worker: %s", err)
            self._schedule_restart()
            return
        finally:
            theirs.close()
        self._proc = proc
        self._started_at = time.monotonic()
        self._exited = asyncio.Event()
        ours.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._channel = Channel(reader, writer, incoming=m.FROM_WORKER, handlers=self._handlers,
                                peer="the libvirt worker", log=log)
        self._down_reason = None
        # What the previous worker reported is not this one's: until the new process says
        # it is connected (and subscribed to events), status must not claim it is.
        self._reported["events"] = dict(self._reported["events"], connected=False)
        self._reader_task = asyncio.create_task(self._read(self._channel, proc))
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None      # kernel before 5.3: poll instead
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._check_exit, proc)
        else:
            self._poll_exit(proc)
        log.info("libvirt worker started (pid %d)", proc.pid)

    def _poll_exit(self, proc: subprocess.Popen) -> None:
        self._poll_handle = None
        if not self._check_exit(proc):
            self._poll_handle = asyncio.get_running_loop().call_later(0.5, self._poll_exit, proc)

    def _check_exit(self, proc: subprocess.Popen) -> bool:
        """Reap the worker if it exited (never blocks); True when it has."""
        if proc is not self._proc or proc.poll() is None:
            return False
        self._reaped(proc)
        return True

    def _reaped(self, proc: subprocess.Popen) -> None:
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None
        if self._channel is not None:
            self._channel.close("the libvirt worker exited")     # fails the requests still waiting
            self._channel = None
        if self._exited is not None:
            self._exited.set()
        status = describe_exit(proc.returncode)
        self._down_reason = f"exited with {status}"
        if self._closing:
            return
        ran = time.monotonic() - self._started_at
        self._failures = 1 if ran >= HEALTHY_AFTER_S else self._failures + 1
        delay = min(RESTART_MIN_S * 2 ** (self._failures - 1), RESTART_MAX_S)
        log.error("libvirt worker (pid %d) exited with %s after %.1f s; restarting in %.0f s "
                  "(hooks and the proxy are unaffected)", proc.pid, status, ran, delay)
        self._schedule_restart(delay)

    def _schedule_restart(self, delay: float = RESTART_MIN_S) -> None:
        if self._closing:
            return
        self._restart_handle = asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_handle = None
        self.restarts += 1
        self._spawning = asyncio.create_task(self._spawn())

    async def close(self) -> None:
        """Ask the worker to stop, wait a bounded time, then SIGKILL it by pid."""
        self._closing = True
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        if self._spawning is not None and not self._spawning.done():
            await self._spawning
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._send(m.Stop())
        assert self._exited is not None
        try:
            await asyncio.wait_for(self._exited.wait(), STOP_GRACE_S)
            return
        except asyncio.TimeoutError:
            pass
        if proc.poll() is None:
            log.warning("libvirt worker (pid %d) did not stop within %.0f s; killing it", proc.pid, STOP_GRACE_S)
            proc.kill()
            try:
                proc.wait(5)    # SIGKILLed: it is gone at once
            except subprocess.TimeoutExpired:
                log.error("libvirt worker (pid %d) survived SIGKILL", proc.pid)
                return
        self._reaped(proc)

    # ------------------------------------------------------------- messages
    def _send(self, msg: m.Message) -> bool:
        return self._channel is not None and self._channel.send(msg)

    async def _read(self, channel: Channel, proc: subprocess.Popen) -> None:
        try:
            await channel.serve(on_handler_error=self._handler_failed)
        except ProtocolError as err:
            log.error("bad message from the libvirt worker (pid %d): %s; killing it", proc.pid, err)
            proc.kill()
            return
        # It exited (the pidfd says so too), or closed its end: then make it exit.
        await asyncio.sleep(STOP_GRACE_S)
        if proc.poll() is None and not self._closing:
            log.error("libvirt worker (pid %d) closed its channel but did not exit; killing it", proc.pid)
            proc.kill()

    @staticmethod
    def _handler_failed(msg: m.Message, err: Exception) -> None:
        # A bug here must not end the channel silently.
        log.error("cannot handle %r from the libvirt worker: %s: %s", msg.KIND, type(err).__name__, err)
        log.debug("traceback", exc_info=err)

    def _on_audit(self, msg: m.AuditRow) -> None:
        self._record_row({k: v for k, v in msg.row.items() if k in _ROW_KEYS})

    def _on_resync(self, msg: m.Resync) -> None:
        self._resync(msg.why, msg.running, msg.pending)

    def _on_status(self, msg: m.WorkerStatus) -> None:
        if msg.events is not None:
            self._reported["events"] = msg.events
        if msg.reconcile is not None:
            domains = msg.reconcile.pop("domains", None)
            if isinstance(domains, dict):       # sent only when they changed
                self._domains = domains
            self._reported["reconcile"] = msg.reconcile

    def _on_pin(self, msg: m.PinRequest) -> None:
        serial = None
        if self.lookup_pin is not None:
            serial = self.lookup_pin(msg.instance_uuid)   # local: a file or memory, never the network
        self._send(m.PinAnswer(id=msg.id, instance_uuid=msg.instance_uuid, serial=serial))

    def _record_row(self, row: dict) -> None:
        op, uuid = row.get("operation"), row.get("instance_uuid")
        if op == "started":
            record, before = self.ledger.started(row)
            for missed in before:
                self.audit.record(**missed)
            if not record:
                log.debug("instance %s: STARTED event of boot %s already recorded by a resync", uuid,
                          row.get("boot"))
                return
        elif op == "stopped" and not self.ledger.stopped(row):
            log.info("instance %s (%s): STOPPED event for a boot not open in the audit (a resync already "
                     "recorded its stop, or it started and stopped while hookd was away); not recorded",
                     uuid, row.get("domain"))
            return
        self.audit.record(**row)

    def _resync(self, why: str, running: list, pending: list) -> None:
        boots = [RunningBoot(str(r["instance_uuid"]), str(r["boot"]),
                             {k: v for k, v in r.items() if k in _ROW_KEYS})
                 for r in running if isinstance(r, dict) and r.get("instance_uuid") and r.get("boot")]
        plan = self.ledger.resync(boots, pending)
        self.resyncs += 1
        for uuid, boot in plan.close:
            self.audit.record(**close_row(uuid, boot, f"found stopped by the resync after {why}"))
            log.warning("instance %s (%s): stopped while hookd was not watching; stop recorded after %s",
                        uuid, boot.domain, why)
        for r in plan.observe:
            self.audit.record(**observe_row(r))
            log.warning("instance %s (%s): running with serial %r, its start not recorded; boot recorded "
                        "after %s", r.instance_uuid, r.row.get("domain"), r.row.get("serial_seen"), why)
        log.info("boot ledger resync after %s: %d running, %d boots recorded after the fact, %d stops, "
                 "%d already recorded", why, len(boots), len(plan.observe), len(plan.close),
                 len(boots) - len(plan.observe))

    # ------------------------------------------------------------- the daemon's calls
    def reload(self) -> None:
        self._send(m.Reload())

    def note_hook(self, instance_uuid: str, op: str) -> None:
        # Stamped here (CLOCK_MONOTONIC is system-wide): the worker compares it with
        # the time of the domain's next STARTED event, whichever message arrives first.
        self._send(m.NoteHook(instance_uuid=instance_uuid, hook=op, t=time.monotonic()))

    def status(self) -> dict:
        events = dict(self._reported["events"])
        events["worker_pid"] = self._proc.pid if self.running else None
        events["worker_restarts"] = self.restarts
        events["resyncs"] = self.resyncs
        events["open_boots"] = len(self.ledger.open)
        if not self.running:
            events["connected"] = False
            events["last_error"] = f"libvirt worker not running ({self._down_reason})"
        return {"events": events, "reconcile": dict(self._reported["reconcile"])}

    def domain_states(self) -> dict:
        """instance UUID -> [domain, state], as the worker's reconciler last reported them
        (the metrics' hookd_domain_state; kept while the worker is away)."""
        return self._domains

    async def reconcile(self, dry_run: bool) -> m.ReconcileOutcome:
        """`hookctl reconcile`, run by the worker; an ErrorReply when it cannot be."""
        if not self.running:
            return m.ErrorReply(f"the libvirt worker is not running ({self._down_reason})")
        try:
            reply = await self._channel.request(lambda req: m.ReconcileRequest(id=req, dry_run=bool(dry_run)),
                                                RECONCILE_TIMEOUT_S)
        except RequestTimeout:
            return m.ErrorReply(f"no answer from the libvirt worker within {RECONCILE_TIMEOUT_S:.0f} s "
                                "(the sweep goes on; see hookctl audit --operation reconcile)")
        except ChannelClosed as err:
            # "cannot reach the libvirt worker", or "the libvirt worker exited" meanwhile.
            return m.ErrorReply(str(err))
        if not isinstance(reply, m.ReconcileResult):
            return m.ErrorReply(f"unexpected answer {reply.KIND!r} from the libvirt worker")
        return reply.result
