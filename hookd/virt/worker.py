"""hookd's libvirt worker: the one process of hookd that is a libvirt client.

Started and supervised by the daemon (hookd.virt.supervisor) as
`python3 -m hookd.virt.worker --fd N [--config PATH]`, it talks to the daemon
over the socketpair end N (hookd.ipc.wire framing both ways). It owns:

  - the connection to `[hookd] libvirt_uri`, with keepalive, a close callback and
    reconnection with backoff when libvirtd restarts (then it resubscribes and
    sweeps, since events were missed meanwhile);
  - libvirt lifecycle events, turned into audit rows (`started`, `stopped`,
    `defined`, `undefined`) that it sends to the daemon, the single writer of the
    audit log; a STARTED row carries the boot key (hookd.virt.qemuproc);
  - the resync for the daemon's boot ledger (hookd.ledger): after every connect,
    once the events already queued are sent, the running domains with their boot
    keys and serials, since libvirt does not replay the events missed meanwhile;
  - running hookd.virt.reconciler: a sweep at start, after each reconnect, every
    `[reconcile] interval` seconds and after a configuration reload; one domain
    after its DEFINED or STARTED event; and `hookctl reconcile` on request.

libvirt-python's calls block the calling thread, so they live here and never in
the daemon: while a qemu hook runs libvirt locks its domain (and list calls),
and the hook waits on the daemon. This process may block on such a call; the
daemon never waits on it (hooks and the proxy work without it). It runs one
asyncio loop with libvirt's events dispatched by libvirtaio, and no threads.
Its lifetime is the daemon's: it stops when told to or when the daemon's end of
the channel closes, and ignores SIGTERM/SIGINT/SIGHUP (the daemon SIGKILLs it by
pid if it does not stop in time).
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
import libvirtaio

from hookd.ipc import wire

from hookd.rpc import upstream

from hookd.virt import qemuproc
from hookd.stores.audit import now_iso
from hookd.config import Config, load_config
from hookd.decision import evaluate
from hookd.errors import HookdError
from hookd.virt.reconciler import ReconcileError, Reconciler

log = logging.getLogger("hookd.worker")

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
#: A domain whose reconcile was put off (a hook call, a migration) is looked at again
#: this often, for up to RETRY_FOR_S; the next sweep catches anything later.
RETRY_EVERY_S = 1.0
RETRY_FOR_S = 180.0
#: Status reports to the daemon are coalesced to at most one per this many seconds.
STATUS_EVERY_S = 0.1
#: How long a pin lookup waits for the daemon (then the domain is left for later).
PIN_TIMEOUT_S = 5.0

_EVENT_TYPES = ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED", "SHUTDOWN",
                "PMSUSPENDED", "CRASHED")
#: libvirt's lifecycle event numbers -> names, from the module's own constants.
EVENT_NAMES: Dict[int, str] = {getattr(libvirt, f"VIR_DOMAIN_EVENT_{e}"): e.lower()
                               for e in _EVENT_TYPES if hasattr(libvirt, f"VIR_DOMAIN_EVENT_{e}")}


def _detail_names(event: str) -> Dict[int, str]:
    prefix = f"VIR_DOMAIN_EVENT_{event}_"
    return {getattr(libvirt, n): n[len(prefix):].lower() for n in dir(libvirt)
            if n.startswith(prefix) and not n.endswith("_LAST") and isinstance(getattr(libvirt, n), int)}


DETAIL_NAMES: Dict[int, Dict[int, str]] = {num: _detail_names(name.upper()) for num, name in EVENT_NAMES.items()}
CLOSE_REASONS = {getattr(libvirt, f"VIR_CONNECT_CLOSE_REASON_{r}"): r.lower()
                 for r in ("ERROR", "EOF", "KEEPALIVE", "CLIENT")}
#: The events that become audit rows (the others are only counted).
RECORDED = frozenset({"started", "stopped", "defined", "undefined"})
FACT_KEYS = ("nova_name", "project", "flavor")
#: Paused reasons of a domain that is still starting (or an incoming migration); on the
#: migration's source the boot is already open, and the ledger leaves both alone.
_NOT_YET_STARTED = frozenset({libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                              getattr(libvirt, "VIR_DOMAIN_PAUSED_POSTCOPY", -1)})
#: Domains remembered for their STOPPED/UNDEFINED rows (transient ones never undefine).
CACHE_MAX = 20000


def event_names(event: int, detail: int) -> Tuple[str, str]:
    name = EVENT_NAMES.get(event, f"event-{event}")
    return name, DETAIL_NAMES.get(event, {}).get(detail, f"detail-{detail}")


def _quiet_libvirt_errors(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


class Worker:
    def __init__(self, config: Config, config_path: Optional[str], fd: int):
        self.config = config
        self.config_path = config_path
        self.uri = config.daemon.libvirt_uri
        self.fd = fd
        self.conn: Optional[libvirt.virConnect] = None
        self._generation = 0
        self._callback_id: Optional[int] = None
        self.connected = False
        self.reconnects = 0
        self.events = 0
        self.last_error: Optional[str] = None
        self.reconciler = Reconciler(lambda: self.config, self._record, pins=self.lookup_pin)
        self._next_id = 0
        self._pin_requests: Dict[int, asyncio.Future] = {}
        self._writer: Optional[asyncio.StreamWriter] = None
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self._sweep_wanted = asyncio.Event()
        self._sweep_why = "start"
        self._event_queue: asyncio.Queue = asyncio.Queue()
        #: instance UUID -> (why, first asked): domains to reconcile one by one.
        self._domain_work: "OrderedDict[str, Tuple[str, float]]" = OrderedDict()
        self._domain_work_ready = asyncio.Event()
        #: instance UUID -> Nova facts (name, project, flavor) from the last XML read:
        #: what STOPPED and UNDEFINED rows carry, as there is nothing left to read then.
        self._facts: "OrderedDict[str, dict]" = OrderedDict()
        #: For boot keys: libvirtd's pid (its mount namespace holds the QEMU pid files),
        #: looked up again at every connect.
        self._libvirtd_pid: Optional[int] = None
        self._kernel_boot_id = qemuproc.kernel_boot_id()
        self._status_handle: Optional[asyncio.TimerHandle] = None
        self._tasks: list = []
        self.exit_code = 0

    # ------------------------------------------------------------ the daemon
    def _send(self, msg: dict) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        try:
            self._writer.write(wire.encode(msg))
        except (HookdError, OSError) as err:
            log.error("cannot send to the daemon: %s", err)

    def _record(self, **row) -> None:
        self._send({"op": "audit", "row": row})

    def status(self) -> dict:
        return {"events": {"uri": self.uri, "connected": self.connected, "reconnects": self.reconnects,
                           "events": self.events, "last_error": self.last_error},
                "reconcile": {**self.reconciler.stats(), "enabled": self.config.reconcile_enabled,
                              "interval": self.config.reconcile_interval}}

    def _status_changed(self) -> None:
        if self._status_handle is None:
            self._status_handle = asyncio.get_running_loop().call_later(STATUS_EVERY_S, self._send_status)

    def _send_status(self) -> None:
        self._status_handle = None
        self._send({"op": "status", **self.status()})

    async def _read_daemon(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                msg = await wire.read_message(reader)
            except (EOFError, ConnectionError):
                log.info("the daemon closed our channel; stopping")
                self._stop.set()
                return
            except HookdError as err:
                log.error("bad message from the daemon: %s; stopping", err)
                self._stop.set()
                return
            op = msg.get("op")
            if op == "pin":
                fut = self._pin_requests.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif op == "note_hook":
                self.reconciler.note_hook(str(msg.get("instance_uuid") or ""), str(msg.get("hook")),
                                          msg.get("t") if isinstance(msg.get("t"), (int, float)) else None)
            elif op == "reload":
                self._reload()
            elif op == "reconcile":
                self._spawn(self._manual_reconcile(msg.get("id"), bool(msg.get("dry_run"))))
            elif op == "stop":
                self._stop.set()
                return
            else:
                log.error("unknown message %r from the daemon; ignored", op)

    async def lookup_pin(self, uuid: str) -> Optional[str]:
        """The instance's pin, from the daemon (the pin store's one owner); bounded wait."""
        self._next_id += 1
        req = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pin_requests[req] = fut
        self._send({"op": "pin", "id": req, "instance_uuid": uuid})
        try:
            reply = await asyncio.wait_for(fut, PIN_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise HookdError(f"no answer from the daemon within {PIN_TIMEOUT_S:g} s") from None
        finally:
            self._pin_requests.pop(req, None)
        if reply.get("error"):
            raise HookdError(str(reply["error"]))
        pin = reply.get("serial")
        return pin if isinstance(pin, str) else None

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

    async def _manual_reconcile(self, req_id, dry_run: bool) -> None:
        if not self.connected or self.conn is None:
            result = {"v": 1, "error": f"not connected to libvirt at {self.uri}"
                      + (f": {self.last_error}" if self.last_error else "")}
        else:
            try:
                items = await self.reconciler.sweep(self.conn, fix=not dry_run,
                                                    why="hookctl reconcile" + (" --dry-run" if dry_run else ""))
                result = {"v": 1, "items": [i.as_dict() for i in items]}
            except ReconcileError as err:
                self._connection_failed(err)
                result = {"v": 1, "error": str(err)}
        # Status first: whoever asked may look at `hookctl status` as soon as we answer.
        if self._status_handle is not None:
            self._status_handle.cancel()
        self._send_status()
        self._send({"op": "reply", "id": req_id, "result": result})

    # ------------------------------------------------------------ libvirt
    def _open(self) -> None:
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
            self._generation += 1
            gen = self._generation
            conn.registerCloseCallback(self._on_close, gen)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, gen)
        except libvirt.libvirtError:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
            raise
        self.conn = conn

    def _drop(self) -> None:
        """Deregister and close; errors are expected when libvirtd is already gone."""
        conn, self.conn = self.conn, None
        self.connected = False
        self._status_changed()
        if conn is None:
            return
        if self._callback_id is not None:
            try:
                conn.domainEventDeregisterAny(self._callback_id)
            except libvirt.libvirtError:
                pass
            self._callback_id = None
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _on_close(self, _conn, reason: int, generation) -> None:
        if generation != self._generation:
            return
        why = CLOSE_REASONS.get(reason, str(reason))
        self.last_error = f"connection closed by libvirt ({why})"
        log.warning("libvirt connection to %s closed (%s); reconnecting", self.uri, why)
        self._lost.set()

    def _connection_failed(self, err: BaseException) -> None:
        self.last_error = str(err)
        if not self._lost.is_set():
            log.warning("libvirt connection to %s failed: %s; reconnecting", self.uri, err)
        self._lost.set()

    async def _keep_connected(self) -> None:
        delay = RECONNECT_MIN_S
        ever = False
        failing = False
        while True:
            self._lost.clear()
            try:
                self._open()
            except libvirt.libvirtError as err:
                self.last_error = str(err)
                self._status_changed()
                if not failing:
                    log.error("cannot connect to libvirt at %s: %s; retrying with backoff", self.uri, err)
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay, failing = RECONNECT_MIN_S, False
            self.connected = True
            self.last_error = None
            if ever:
                self.reconnects += 1
                log.info("reconnected to libvirt at %s (reconnect %d); events resubscribed", self.uri,
                         self.reconnects)
            else:
                log.info("connected to libvirt at %s; subscribed to lifecycle events", self.uri)
            self._status_changed()
            why = "a reconnect to libvirt" if ever else "the worker's start"
            self._libvirtd_pid = qemuproc.socket_peer_pid(upstream.resolve(self.config.daemon.libvirt_socket).path)
            # Events were missed while we were away (or before we started): list the
            # running domains once the events already queued are recorded.
            self._event_queue.put_nowait(("resync", why))
            self._want_sweep("reconnected" if ever else "worker start")
            ever = True
            await self._lost.wait()
            self._drop()

    def _on_lifecycle(self, _conn, dom, event: int, detail: int, generation) -> None:
        if generation != self._generation:
            return          # a callback of a connection we already dropped
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
                        self._connection_failed(err)    # the next connect resyncs
                continue
            stamp, dom, event, detail = item
            name, detail_name = event_names(event, detail)
            if name in RECORDED:
                try:
                    await self._record_event(stamp, dom, name, detail_name)
                except ReconcileError as err:
                    self._connection_failed(err)
            if name in ("defined", "started"):
                # DEFINED: someone wrote a definition; STARTED/MIGRATED: this host now
                # holds the guest, and its saved definition is ours to fix.
                self._want_domain(dom.UUIDString(), f"after {name}/{detail_name} event")

    async def _read_definition(self, dom, name: str) -> Tuple[Optional[dict], str]:
        """Nova facts and the serial decision of a domain's live (started) or saved
        (defined) XML, as audit columns, and a note for the row's detail."""
        dname, uuid = dom.name(), dom.UUIDString()
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if name == "defined" else 0
        try:
            xml = dom.XMLDesc(flags)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN and not self._alive():
                raise ReconcileError(f"libvirt connection lost: {err}") from err
            return None, f"; definition not readable ({err.get_error_message()})"
        note = ""
        try:
            pin = await self.lookup_pin(uuid)
        except HookdError as err:
            pin = None
            note += f"; serial_wanted decided without the pin store ({err})"
        try:
            ev = evaluate(xml.encode("utf-8", "surrogatepass"), self.config.policy, rewrite=False,
                          what=f"{name} XML of domain {dname!r}", pins=lambda _uuid: pin)
        except HookdError as err:
            return None, note + f"; cannot read the definition: {err}"
        d, nova = ev.decision, ev.facts.nova
        seen = {"nova_name": nova.name if nova else None,
                "project": nova.project_uuid if nova else None,
                "flavor": nova.flavor_name if nova else None,
                "serial_seen": d.serial_current, "serial_wanted": d.serial_policy,
                "verdict": d.verdict, "rule": d.rule}
        note += ("; serial_seen is the saved definition's (next cold boot)" if name == "defined"
                 else "; serial_seen is the running guest's")
        return seen, note

    def _boot_of(self, dom) -> Tuple[Optional[str], Optional[str]]:
        """(boot key, QEMU start time) of a running domain; (None, None) once it is gone."""
        try:
            domain_id = dom.ID()
        except libvirt.libvirtError:
            return None, None
        if domain_id is None or domain_id < 0:
            return None, None
        start = qemuproc.qemu_start(dom.UUIDString(), dom.name(), self._libvirtd_pid)
        return qemuproc.boot_key(domain_id, start, self._kernel_boot_id), start.since if start else None

    async def _record_event(self, stamp: str, dom, name: str, detail_name: str) -> None:
        dname, uuid = dom.name(), dom.UUIDString()
        row = {"time": stamp, "operation": name, "domain": dname, "instance_uuid": uuid,
               "action": detail_name}
        what = f"libvirt event {name.upper()}/{detail_name.upper()}"
        if name in ("started", "defined"):
            if name == "started":
                # Read before the XML: a guest that stops meanwhile has no id any more.
                row["boot"], row["since"] = self._boot_of(dom)
            seen, note = await self._read_definition(dom, name)
            what += note
            if seen is not None:
                row.update(seen)
                self._remember(self._facts, uuid, {k: seen[k] for k in FACT_KEYS})
        else:
            # Stopped or gone: nothing left to read. Name the instance as last seen; the
            # daemon's boot ledger adds the boot and the serial it ran with.
            facts = self._facts.pop(uuid, None) if name == "undefined" else self._facts.get(uuid)
            if facts is not None:
                row.update(facts)
        row["detail"] = what
        if name == "started":
            log.info("instance %s (%s) started (%s) with serial %r", uuid, dname, detail_name,
                     row.get("serial_seen"))
        else:
            log.debug("instance %s (%s): %s", uuid, dname, what)
        self._record(**row)

    async def _resync(self, why: str) -> None:
        """List the running domains for the daemon's boot ledger: boots whose STARTED
        event we missed (or whose STOPPED event: they are absent) while away."""
        try:
            doms = self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as err:
            raise ReconcileError(f"cannot list running domains: {err}") from err
        running, pending = [], []
        for dom in doms:
            uuid = dom.UUIDString()
            try:
                state, reason = dom.state()
            except libvirt.libvirtError:
                continue        # gone since the list: its STOPPED event follows
            if state == libvirt.VIR_DOMAIN_PAUSED and reason in _NOT_YET_STARTED:
                # Active to libvirt but not yet started (its hooks may still run): its
                # STARTED event is still to come, and must be what records it.
                pending.append(uuid)
                continue
            boot, since = self._boot_of(dom)
            if boot is None:
                continue
            seen, note = await self._read_definition(dom, "running")
            row = {"domain": dom.name(), "instance_uuid": uuid, "boot": boot, "since": since,
                   "detail": f"found running by the resync after {why}, its STARTED event missed; "
                             f"running since {since or 'an unknown time (QEMU process not visible)'}" + note}
            if seen is not None:
                row.update(seen)
                self._remember(self._facts, uuid, {k: seen[k] for k in FACT_KEYS})
            running.append(row)
        self._send({"op": "resync", "why": why, "running": running, "pending": pending})
        log.info("resync after %s: %d running domains listed for the boot ledger%s", why, len(running),
                 f", {len(pending)} starting or migrating" if pending else "")

    @staticmethod
    def _remember(cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > CACHE_MAX:
            cache.popitem(last=False)

    def _alive(self) -> bool:
        try:
            return self.conn is not None and bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

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
                self._connection_failed(err)
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
                    if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN and not self._alive():
                        self._connection_failed(err)
                    continue
                try:
                    item = await self.reconciler.reconcile_domain(dom, fix=True, why=why)
                except ReconcileError as err:
                    self._connection_failed(err)
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
        loop = asyncio.get_running_loop()
        # Must be registered inside the running loop and before any connection is opened.
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        libvirt.registerErrorHandler(_quiet_libvirt_errors, None)
        sock = socket.socket(fileno=self.fd)
        sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        self._send_status()
        for coro in (self._read_daemon(reader), self._keep_connected(), self._process_events(),
                     self._sweeper(), self._domain_worker()):
            self._spawn(coro)
        await self._stop.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._drop()
        if self._status_handle is not None:
            self._status_handle.cancel()
        self._send_status()
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (OSError, asyncio.TimeoutError):
            pass
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
    from hookd.daemon import setup_logging
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
