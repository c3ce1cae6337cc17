"""hookd's libvirt worker: the one process of hookd that is a libvirt client.

Started and supervised by the daemon (hookd.virt.supervisor) as
`python3 -m hookd.virt.worker --fd N [--config PATH]`, it talks to the daemon
over the socketpair end N (a hookd.ipc.channel of hookd.ipc.messages both ways).
hookd.virt.connection holds the libvirt connection (keepalive, reconnects with
backoff), hookd.virt.events turns lifecycle events and running domains into rows.
This module owns the protocol with the daemon (the audit log's single writer gets
the rows), the resync for its boot ledger (hookd.ledger: after every connect, once
the events already queued are sent, the running domains with their boot keys and
serials, since libvirt does not replay missed events), and the scheduling of
hookd.virt.reconciler: a sweep at start, after each reconnect, every `[reconcile]
interval` seconds and after a configuration reload; one domain after its DEFINED
or STARTED event; and `hookctl reconcile` on request.

libvirt-python's calls block the calling thread, so they live here and never in
the daemon: while a qemu hook runs libvirt locks its domain (and list calls),
and the hook waits on the daemon. This process may block on such a call; the
daemon never waits on it (hooks and the proxy work without it). It runs one
asyncio loop with libvirt's events dispatched by libvirtaio, and no threads; every
asyncio object is made in run(), inside that loop. Its lifetime is the daemon's:
it stops when told to or when the daemon's end of the channel closes, and ignores
SIGTERM/SIGINT/SIGHUP (the daemon SIGKILLs it by pid if it does not stop in time).
It must not decide anything about hooks, write the audit log, or touch a running
guest.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import libvirt

from hookd.config import Config, load_config
from hookd.errors import HookdError, ProtocolError
from hookd.ipc import messages as m
from hookd.ipc.channel import Channel, ChannelClosed, RequestTimeout
from hookd.rpc import upstream
from hookd.clock import now_iso
from hookd.virt import qemuproc
from hookd.virt.connection import Connection
from hookd.virt.events import EVENT_NAMES, RECORDED, RowBuilder, event_names
from hookd.virt.reconciler import ReconcileError, Reconciler

log = logging.getLogger("hookd.worker")

#: A domain whose reconcile was put off (a hook call, a migration) is looked at again
#: this often, for up to RETRY_FOR_S; the next sweep catches anything later.
RETRY_EVERY_S = 1.0
RETRY_FOR_S = 180.0
#: Status reports to the daemon are coalesced to at most one per this many seconds.
STATUS_EVERY_S = 0.1
#: How long a pin lookup waits for the daemon (then the domain is left for later).
PIN_TIMEOUT_S = 5.0


class Worker:
    def __init__(self, config: Config, config_path: Optional[str], fd: int):
        self.config = config
        self.config_path = config_path
        self.uri = config.daemon.libvirt_uri
        self.fd = fd
        self.link = Connection(self.uri, on_connected=self._connected, on_lifecycle=self._on_lifecycle,
                               on_change=self._status_changed)
        self.rows = RowBuilder(lambda: self.config, self.lookup_pin, self.link.alive)
        self.events = 0
        self._channel: Optional[Channel] = None
        self._handlers = {m.NoteHook: self._on_note_hook, m.Reload: self._on_reload,
                          m.ReconcileRequest: self._on_reconcile, m.Stop: self._on_stop}
        self._sweep_why = "start"
        #: instance UUID -> (why, first asked): domains to reconcile one by one.
        self._domain_work: "OrderedDict[str, Tuple[str, float]]" = OrderedDict()
        self._status_handle: Optional[asyncio.TimerHandle] = None
        self._states_sent = -1
        self._tasks: list = []
        self.exit_code = 0
        # Made in run(), inside the running loop: on Python 3.9 an asyncio object made
        # before asyncio.run binds to another loop (the reconciler holds locks).
        self.reconciler: Optional[Reconciler] = None
        self._stop: Optional[asyncio.Event] = None
        self._sweep_wanted: Optional[asyncio.Event] = None
        self._event_queue: Optional[asyncio.Queue] = None
        self._domain_work_ready: Optional[asyncio.Event] = None

    @property
    def conn(self) -> Optional[libvirt.virConnect]:
        return self.link.conn

    @property
    def connected(self) -> bool:
        return self.link.connected

    # ------------------------------------------------------------ the daemon
    def _send(self, msg: m.Message) -> None:
        if self._channel is not None:
            self._channel.send(msg)

    def _record(self, **row) -> None:
        self._send(m.AuditRow(row))

    def status(self) -> dict:
        return {"events": {"uri": self.uri, "connected": self.link.connected, "reconnects": self.link.reconnects,
                           "events": self.events, "last_error": self.link.last_error},
                "reconcile": {**self.reconciler.stats(), "enabled": self.config.reconcile_enabled,
                              "interval": self.config.reconcile_interval}}

    def _status_changed(self) -> None:
        if self._status_handle is None:
            self._status_handle = asyncio.get_running_loop().call_later(STATUS_EVERY_S, self._send_status)

    def _send_status(self) -> None:
        self._status_handle = None
        st = self.status()
        if self.reconciler is not None and self.reconciler.states_version != self._states_sent:
            # Per-domain states (the metrics' hookd_domain_state) only when they changed.
            self._states_sent = self.reconciler.states_version
            st["reconcile"]["domains"] = self.reconciler.domain_states()
        self._send(m.WorkerStatus(**st))

    async def _read_daemon(self) -> None:
        try:
            await self._channel.serve()
        except ProtocolError as err:
            log.error("bad message from the daemon: %s; stopping", err)
        else:
            log.info("the daemon closed our channel; stopping")
        self._stop.set()

    def _on_note_hook(self, msg: m.NoteHook) -> None:
        self.reconciler.note_hook(msg.instance_uuid, msg.hook, msg.t)

    def _on_reload(self, _msg: m.Reload) -> None:
        self._reload()

    def _on_reconcile(self, msg: m.ReconcileRequest) -> None:
        self._spawn(self._manual_reconcile(msg.id, msg.dry_run))

    def _on_stop(self, _msg: m.Stop) -> None:
        self._stop.set()

    async def lookup_pin(self, uuid: str) -> Optional[str]:
        """The instance's pin, from the daemon (the pin store's one owner); bounded wait."""
        if self._channel is None:
            raise HookdError("not connected to the daemon")
        try:
            reply = await self._channel.request(lambda req: m.PinRequest(id=req, instance_uuid=uuid), PIN_TIMEOUT_S)
        except RequestTimeout as err:
            raise HookdError(f"no answer from the daemon within {PIN_TIMEOUT_S:g} s") from err
        except ChannelClosed as err:
            raise HookdError(f"no answer from the daemon: {err}") from err
        if not isinstance(reply, m.PinAnswer):
            raise HookdError(f"unexpected answer {reply.KIND!r} from the daemon to a pin lookup")
        return reply.serial

    def _reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except HookdError as err:
            log.error("configuration reload rejected: %s; keeping the previous one", err)
            return
        # [hookd] (the URI among them) changes only at a restart, as in the daemon.
        self.config = dataclasses.replace(new, daemon=self.config.daemon)
        log.info("configuration reloaded: reconcile %s, interval %g s",
                 "enabled" if new.reconcile_enabled else "disabled", new.reconcile_interval)
        self._status_changed()
        # The policy may have changed under every saved definition.
        self._want_sweep("configuration reloaded")

    async def _manual_reconcile(self, req_id: int, dry_run: bool) -> None:
        result: m.ReconcileOutcome
        if not self.connected or self.conn is None:
            last_error = self.link.last_error
            result = m.ErrorReply(f"not connected to libvirt at {self.uri}"
                                  + (f": {last_error}" if last_error else ""))
        else:
            try:
                items = await self.reconciler.sweep(self.conn, fix=not dry_run,
                                                    why="hookctl reconcile" + (" --dry-run" if dry_run else ""))
                result = m.ReconcileReply([i.as_dict() for i in items])
            except ReconcileError as err:
                self.link.failed(err)
                result = m.ErrorReply(str(err))
        # Status first: whoever asked may look at `hookctl status` as soon as we answer.
        if self._status_handle is not None:
            self._status_handle.cancel()
        self._send_status()
        self._send(m.ReconcileResult(id=req_id, result=result))

    # ------------------------------------------------------------ libvirt
    def _connected(self, first: bool) -> None:
        why = "the worker's start" if first else "a reconnect to libvirt"
        self.rows.libvirtd_pid = qemuproc.socket_peer_pid(upstream.resolve(self.config.daemon.libvirt_socket).path)
        # Events were missed while we were away (or before we started): list the
        # running domains once the events already queued are recorded.
        self._event_queue.put_nowait(("resync", why))
        self._want_sweep("worker start" if first else "reconnected")

    def _on_lifecycle(self, dom, event: int, detail: int) -> None:
        self.events += 1
        self._status_changed()
        now = time.monotonic()
        if EVENT_NAMES.get(event) in ("started", "stopped"):
            # Stamp it now: a hook call noted later, but made before, must not hold it.
            self.reconciler.note_settled(dom.UUIDString(), now)
        self._event_queue.put_nowait((now_iso(), dom, event, detail))

    async def _process_events(self) -> None:
        while True:
            item = await self._event_queue.get()
            if item[0] == "resync":
                if self.connected and self.conn is not None:
                    try:
                        await self._resync(item[1])
                    except ReconcileError as err:
                        self.link.failed(err)    # the next connect resyncs
                continue
            stamp, dom, event, detail = item
            name, detail_name = event_names(event, detail)
            if name == "undefined":
                self.reconciler.forget(dom.UUIDString())
            if name in RECORDED:
                try:
                    self._record(**await self.rows.event_row(stamp, dom, name, detail_name))
                except ReconcileError as err:
                    self.link.failed(err)
            if name in ("defined", "started"):
                # DEFINED: someone wrote a definition; STARTED/MIGRATED: this host now
                # holds the guest, and its saved definition is ours to fix.
                self._want_domain(dom.UUIDString(), f"after {name}/{detail_name} event")

    async def _resync(self, why: str) -> None:
        """List the running domains for the daemon's boot ledger: boots whose STARTED
        event we missed (or whose STOPPED event: they are absent) while away."""
        running, pending = await self.rows.resync_rows(self.conn, why)
        self._send(m.Resync(why=why, running=running, pending=pending))
        log.info("resync after %s: %d running domains listed for the boot ledger%s", why, len(running),
                 f", {len(pending)} starting or migrating" if pending else "")

    # ------------------------------------------------------------ reconciling
    def _want_sweep(self, why: str) -> None:
        self._sweep_why = why
        self._sweep_wanted.set()

    def _want_domain(self, uuid: str, why: str) -> None:
        if not self.config.reconcile_enabled:
            return
        if uuid not in self._domain_work:
            self._domain_work[uuid] = (why, time.monotonic())
        self._domain_work_ready.set()

    async def _sweeper(self) -> None:
        while True:
            cfg = self.config
            periodic = cfg.reconcile_interval if cfg.reconcile_enabled and cfg.reconcile_interval > 0 else None
            try:
                await asyncio.wait_for(self._sweep_wanted.wait(), periodic)
                why = self._sweep_why
            except asyncio.TimeoutError:
                why = "periodic"
            self._sweep_wanted.clear()
            if not self.config.reconcile_enabled or not self.connected or self.conn is None:
                continue    # no automatic fixes; (re)connecting asks for a sweep again
            try:
                await self.reconciler.sweep(self.conn, fix=True, why=why)
            except ReconcileError as err:
                self.link.failed(err)
            self._status_changed()

    async def _domain_worker(self) -> None:
        """Reconcile single domains (after their events), one at a time, retrying put-off ones."""
        while True:
            await self._domain_work_ready.wait()
            self._domain_work_ready.clear()
            later: Dict[str, Tuple[str, float]] = {}
            while self._domain_work:
                uuid, (why, first) = self._domain_work.popitem(last=False)
                if not self.connected or self.conn is None or not self.config.reconcile_enabled:
                    continue    # the sweep after reconnecting covers it
                try:
                    dom = self.conn.lookupByUUIDString(uuid)
                except libvirt.libvirtError as err:
                    if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN and not self.link.alive():
                        self.link.failed(err)
                    continue
                try:
                    item = await self.reconciler.reconcile_domain(dom, fix=True, why=why)
                except ReconcileError as err:
                    self.link.failed(err)
                    continue
                self._status_changed()
                if item.retry:
                    if time.monotonic() - first < RETRY_FOR_S:
                        later[uuid] = (why, first)
                    else:
                        log.warning("instance %s (%s): reconcile put off for %.0f s (%s); the next sweep "
                                    "will look again", uuid, item.domain, RETRY_FOR_S, item.detail)
            if later:
                asyncio.get_running_loop().call_later(RETRY_EVERY_S, self._requeue, later)

    def _requeue(self, later: Dict[str, Tuple[str, float]]) -> None:
        for uuid, entry in later.items():
            self._domain_work.setdefault(uuid, entry)
        self._domain_work_ready.set()

    # ------------------------------------------------------------ lifecycle
    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            log.error("worker task failed: %s: %s; stopping (the daemon restarts us)", type(err).__name__, err)
            log.debug("traceback", exc_info=err)
            self.exit_code = 1
            self._stop.set()

    async def run(self) -> int:
        self._stop = asyncio.Event()
        self._sweep_wanted = asyncio.Event()
        self._event_queue = asyncio.Queue()
        self._domain_work_ready = asyncio.Event()
        self.reconciler = Reconciler(lambda: self.config, self._record, pins=self.lookup_pin)
        # libvirtaio: registered inside the running loop and before any connection is opened.
        self.link.start()
        sock = socket.socket(fileno=self.fd)
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._channel = Channel(reader, writer, incoming=m.TO_WORKER, handlers=self._handlers,
                                peer="the daemon", log=log)
        self._send_status()
        for coro in (self._read_daemon(), self.link.run(), self._process_events(),
                     self._sweeper(), self._domain_worker()):
            self._spawn(coro)
        await self._stop.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.shutdown()
        if self._status_handle is not None:
            self._status_handle.cancel()
        self._send_status()
        await self._channel.aclose("the libvirt worker stopped")
        log.debug("libvirt worker stopped")
        return self.exit_code


#: prctl(2) option: the signal this process gets when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> bool:
    """SIGKILL us when the daemon dies, stopped or not. Its channel's EOF says so too, but
    a worker that is itself stopped (SIGSTOP to the whole process group) or blocked in
    libvirt never reads it, and outside systemd no cgroup kill cleans up after a
    SIGKILLed daemon. False when the daemon is already gone."""
    parent = os.getppid()
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass        # not Linux/glibc: the channel's EOF is what stops us
    return os.getppid() == parent      # else the daemon died before prctl took hold


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hookd-libvirtworker",
                                description="hookd's libvirt client (events, reconciler); started by hookd")
    p.add_argument("--fd", type=int, required=True, help="the daemon's socketpair end")
    p.add_argument("--config", metavar="FILE")
    args = p.parse_args(argv)
    # The daemon decides when we stop: it says so, or its end of our channel closes
    # when it dies. A terminal's ^C or hangup, and systemd's SIGTERM to the whole
    # cgroup at `systemctl stop`, also reach us; obeying them would look like a crash
    # to the supervisor (and get us restarted) while the daemon is still draining.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if not _die_with_parent():
        return 1
    from hookd.logs import setup_logging
    try:
        config = load_config(args.config)
    except HookdError as err:
        setup_logging("info")
        log.error("libvirt worker: %s", err)
        return 1
    setup_logging(config.daemon.log_level)
    # libvirtaio logs every watch and timer update at debug level: noise, not hookd's story.
    logging.getLogger("virEventAsyncIOImpl").setLevel(logging.WARNING)
    try:
        return asyncio.run(Worker(config, args.config, args.fd).run())
    except HookdError as err:
        log.error("libvirt worker: %s", err)
        log.debug("details", exc_info=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
