"""The libvirt worker's one connection to libvirtd (`[hookd] libvirt_uri`).

Owns: registering libvirtaio as libvirt's event loop (inside the running asyncio
loop, before any connection is opened), opening the connection with keepalive, a
close callback and the lifecycle-event subscription, noticing its loss (close
callback, a failed call), reconnecting with backoff, and on shutdown deregistering
the subscription and the close callback, closing, and letting libvirtaio run the
free callbacks still pending (bounded). A connection's callbacks carry its
generation: those of a connection already dropped are ignored.

Its counters (connected, reconnects, last_error) are what the worker reports. It
must not turn events into rows (hookd.virt.events), decide what to reconcile or
send anything to the daemon (hookd.virt.worker): it calls back on_connected,
on_lifecycle and on_change. Like every libvirt call, its calls may block the worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

import libvirt
import libvirtaio

log = logging.getLogger("hookd.worker")

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
#: At shutdown, how long libvirtaio may take to run the callbacks a closed connection left.
DRAIN_S = 1.0

CLOSE_REASONS = {getattr(libvirt, f"VIR_CONNECT_CLOSE_REASON_{r}"): r.lower()
                 for r in ("ERROR", "EOF", "KEEPALIVE", "CLIENT")}


def _quiet_libvirt_errors(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


def register_event_loop() -> "libvirtaio.virEventAsyncIOImpl":
    """libvirtaio as libvirt's event implementation, bound to the running loop. Must run
    inside that loop (never before asyncio.run) and before any connection is opened."""
    impl = libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())
    libvirt.registerErrorHandler(_quiet_libvirt_errors, None)
    return impl


class Connection:
    """`on_connected(first)` runs after each successful connect (first: the worker's
    first), `on_lifecycle(dom, event, detail)` for each lifecycle event of the current
    connection, `on_change()` whenever a reported counter changed."""

    def __init__(self, uri: str, *, on_connected: Callable[[bool], None],
                 on_lifecycle: Callable[[object, int, int], None], on_change: Callable[[], None]):
        self.uri = uri
        self.conn: Optional[libvirt.virConnect] = None
        self.connected = False
        self.reconnects = 0
        self.last_error: Optional[str] = None
        self._on_connected = on_connected
        self._on_lifecycle = on_lifecycle
        self._on_change = on_change
        self._generation = 0
        self._callback_id: Optional[int] = None
        self._impl = None
        #: Made in run(): an asyncio object made before asyncio.run binds to another loop on 3.9.
        self._lost: Optional[asyncio.Event] = None

    # ------------------------------------------------------------ open and close
    def _open(self) -> None:
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
            self._generation += 1
            gen = self._generation
            conn.registerCloseCallback(self._closed_by_libvirt, gen)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, gen)
        except libvirt.libvirtError:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
            raise
        self.conn = conn

    def drop(self) -> None:
        """Deregister and close; errors are expected when libvirtd is already gone."""
        conn, self.conn = self.conn, None
        self.connected = False
        self._on_change()
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

    async def shutdown(self) -> None:
        """drop(), then let libvirtaio run the free callbacks it still holds (bounded)."""
        self.drop()
        if self._impl is not None:
            try:
                await asyncio.wait_for(self._impl.drain(), DRAIN_S)
            except asyncio.TimeoutError:
                log.debug("libvirtaio not idle %g s after the connection closed", DRAIN_S)

    # ------------------------------------------------------------ callbacks
    def _closed_by_libvirt(self, _conn, reason: int, generation) -> None:
        if generation != self._generation:
            return
        why = CLOSE_REASONS.get(reason, str(reason))
        self.last_error = f"connection closed by libvirt ({why})"
        log.warning("libvirt connection to %s closed (%s); reconnecting", self.uri, why)
        self._lost.set()

    def _lifecycle(self, _conn, dom, event: int, detail: int, generation) -> None:
        if generation != self._generation:
            return          # a callback of a connection we already dropped
        self._on_lifecycle(dom, event, detail)

    def failed(self, err: BaseException) -> None:
        """A call on the connection failed as if libvirtd were gone: reconnect."""
        self.last_error = str(err)
        if not self._lost.is_set():
            log.warning("libvirt connection to %s failed: %s; reconnecting", self.uri, err)
        self._lost.set()

    def alive(self) -> bool:
        try:
            return self.conn is not None and bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    # ------------------------------------------------------------ the loop
    def start(self) -> None:
        """Inside the running loop, before run(): register libvirtaio, make the loop's objects."""
        self._lost = asyncio.Event()
        self._impl = register_event_loop()

    async def run(self) -> None:
        """Connect, and reconnect with backoff, until cancelled (after start())."""
        delay = RECONNECT_MIN_S
        ever = False
        failing = False
        while True:
            self._lost.clear()
            try:
                self._open()
            except libvirt.libvirtError as err:
                self.last_error = str(err)
                self._on_change()
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
            self._on_change()
            self._on_connected(not ever)
            ever = True
            await self._lost.wait()
            self.drop()
