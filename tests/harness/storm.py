"""A boot storm: many diskless TCG guests defined and started at once through hookd's proxy.

Shared by tests/reliability/test_boot_storm.py and bench/bench_rss.py. Each guest
gets its own libvirt-python connection to the proxy socket and its own thread, the
way many nova-compute workers (or a host coming back up) hit libvirt together.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import List, Optional

from tests.harness.guest import nova_domain_xml

#: What Nova's sysinfo_serial=auto writes on this imaginary host: out of policy.
HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


@dataclass
class StartResult:
    name: str
    uuid: str
    ok: bool = False
    error: str = ""
    define_s: float = 0.0
    start_s: float = 0.0


@dataclass
class Storm:
    results: List[StartResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> List[StartResult]:
        return [r for r in self.results if not r.ok]


def boot_storm(uri: str, count: int, *, prefix: str = "storm", memory_mib: int = 64,
               serial: Optional[str] = HOST_SERIAL, timeout: float = 120.0) -> Storm:
    """Define and start `count` guests in parallel through `uri`; one connection per guest.

    Every thread opens its connection first and waits at a barrier, so the defines
    and starts really overlap. Returns per-guest timings; never raises for a
    failed start (the caller asserts).
    """
    import libvirt

    results = []
    for i in range(count):
        uid = str(uuidlib.uuid4())
        results.append(StartResult(f"{prefix}-{i:02d}", uid))
    barrier = threading.Barrier(count + 1)

    def one(r: StartResult) -> None:
        conn = None
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            r.error = f"open: {err}"
        try:
            barrier.wait(timeout)
        except threading.BrokenBarrierError:
            r.error = r.error or "barrier broken"
        if conn is None or r.error:
            return
        try:
            xml = nova_domain_xml(name=r.name, uuid=r.uuid, serial=serial, image=None,
                                  console_log=None, memory_mib=memory_mib, nova_name=r.name)
            t0 = time.monotonic()
            dom = conn.defineXML(xml)
            t1 = time.monotonic()
            dom.create()
            r.start_s = time.monotonic() - t1
            r.define_s = t1 - t0
            r.ok = True
        except libvirt.libvirtError as err:
            r.error = str(err)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in results]
    for t in threads:
        t.start()
    barrier.wait(timeout)
    t0 = time.monotonic()
    for t in threads:
        t.join(timeout)
    storm = Storm(results, time.monotonic() - t0)
    hung = [t for t in threads if t.is_alive()]
    if hung:
        raise AssertionError(f"{len(hung)} start threads still running after {timeout}s")
    return storm
