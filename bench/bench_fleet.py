"""What a fleet leaves in etcd: hookd's state (pins, last boots) against one key per audit row.

A simulated fleet (default 1,000 hosts x 20 instances = 20,000 instances, about a
minute and a half; `--instances-per-host 100` is the 100,000-instance fleet, about
six minutes) against
a real etcd (Debian's etcd-server, started as tests/harness/etcd_proc.py does),
once per scheme, each on its own fresh etcd, the same workload (same seed) in the
same run:

  new   hookd.stores.etcd as it is: `mirror_audit` gets every audit row; each
        instance's last boot goes to PREFIX/lastboot/UUID (one transaction,
        overwritten in place, coalesced while etcd is unreachable);
  old   the baseline: the audit copy hookd sent before (one key per row,
        PREFIX/audit/HOST/<time>-<seq>, the value json.dumps(row); the code of
        EtcdPinStore._writer_loop up to commit 514b1e8, reproduced here).

The workload, per instance, in this order:

  adopt    `hookctl adopt` on every host: one create-if-absent pin transaction
           (the store's own _txn_body); hookctl records no audit row for it;
  boot     a Nova hard reboot / power-on: stopped, define (proxy), defined
           (event), prepare (hook), started (event): 5 audit rows, 1 boot;
  migrate  --migrate of the instances (default 10 %) live-migrate to another
           host: stopped on the source; migrate, prepare, started, defined on the
           target: 5 rows, 1 boot on another host;
  outage   etcd unreachable (every host queues; simulated by sending nothing
           until the phase ends) while every instance reboots --outage-boots
           times (default 2): 5 rows per boot.

Every host is an EtcdPinStore (new) or an old-scheme mirror (old) of its own, with
its own queue, but not started: no watch and no pin cache (a watch per host is
not what is measured). All of them send through one pool of --connections
(default 32) keep-alive HTTP connections to the etcd gateway instead of the
daemon's one connection per request; the requests are the daemon's, one per pin
and per last boot. The old scheme's rows are sent 128 puts per transaction
(etcd's --max-txn-ops default) to keep the run short (--old-unbatched: one put
per row, as the old daemon sent them): the keys are the same either way, and so
is the DB size after a defragmentation; before one, batched puts fill bbolt's
pages tighter (measured: 1 % smaller at 10,000 instances, 16 % at 1,000), so
the baseline's size is, if anything, understated.

Figures per phase and at the end: write requests (the daemon's, per operation),
keys under the prefix (count_only range), etcd's dbSize and dbSizeInUse
(/v3/maintenance/status), then the same after a compaction to the current
revision and a defragmentation: what etcd's auto-compaction plus a periodic
defrag gives back. The old scheme's etcd runs with an 8 GiB quota so that its
size can be measured past the 2 GiB default; the figure says where it would have
raised NOSPACE. Nothing here asserts anything.

`python3 bench/bench_fleet.py [--hosts N --instances-per-host N ...]` or
`python3 bench/run.py bench_fleet` (scale from HOOKD_BENCH_FLEET_HOSTS and
HOOKD_BENCH_FLEET_INSTANCES).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid as uuidlib
from collections import deque

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hookd.stores.audit import COLUMNS  # noqa: E402
from hookd.config import StoreSettings  # noqa: E402
from hookd.errors import StoreError  # noqa: E402
from hookd.stores.etcd import EtcdPinStore  # noqa: E402
from hookd.stores.etcdgateway import b64 as _b64, http_post, prefix_end as _prefix_end, read_body, read_response_head  # noqa: E402
from tests.harness.etcd_proc import EtcdProcess  # noqa: E402

HOSTS = int(os.environ.get("HOOKD_BENCH_FLEET_HOSTS", "1000"))
PER_HOST = int(os.environ.get("HOOKD_BENCH_FLEET_INSTANCES", "20"))
PREFIX = "/hookd/"
DEFAULT_QUOTA = 2 * 1024 ** 3          # etcd's default --quota-backend-bytes
OLD_QUOTA = 8 * 1024 ** 3
OLD_BATCH = 128                        # etcd's default --max-txn-ops
OLD_QUEUE_MAX = 10_000                 # the old AUDIT_QUEUE_MAX


# ----------------------------------------------------------------------- etcd

class Pool:
    """Keep-alive HTTP/1.1 connections to the gateway, shared by every simulated host;
    `call` is the daemon client's (hookd.stores.etcdgateway.AsyncClient.call) interface."""

    def __init__(self, url: str, size: int):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.size = u.hostname, u.port, size
        self.idle: asyncio.Queue = asyncio.Queue()
        self.opened = 0
        self.requests: dict = {}

    async def _conn(self):
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            return await asyncio.open_connection(self.host, self.port)
        return await self.idle.get()

    async def call(self, path: str, body: dict) -> dict:
        self.requests[path] = self.requests.get(path, 0) + 1
        reader, writer = await self._conn()
        ok = False
        try:
            writer.write(http_post(self.host, path, body))
            status, headers = await read_response_head(reader)
            data = await read_body(reader, headers)
            ok = True
        except (OSError, asyncio.IncompleteReadError) as err:
            raise StoreError(f"etcd {path}: {err or type(err).__name__}") from err
        finally:
            if ok:
                self.idle.put_nowait((reader, writer))
            else:
                writer.close()
                self.opened -= 1
        if status.split()[1:2] != [b"200"]:
            raise StoreError(f"etcd {path}: {status.decode('latin-1').strip()}: {data[:200].decode(errors='replace')}")
        return json.loads(data or b"{}")

    async def close(self):
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


async def etcd_figures(pool: Pool) -> dict:
    status = await pool.call("/v3/maintenance/status", {})
    keys = await pool.call("/v3/kv/range", {"key": _b64(PREFIX), "range_end": _b64(_prefix_end(PREFIX)),
                                            "count_only": True})
    return {"keys": int(keys.get("count", 0)), "revision": int(status["header"]["revision"]),
            "db_size": int(status["dbSize"]), "db_size_in_use": int(status.get("dbSizeInUse", 0))}


# ------------------------------------------------------------------- schemes

class OldMirror:
    """The old audit copy: every row one key PREFIX/audit/HOST/<time>-<seq> (as up to 514b1e8)."""

    def __init__(self, host: str, pool: Pool, batch: int):
        self.host, self.pool, self.batch = host, pool, batch
        self._audit: deque = deque(maxlen=OLD_QUEUE_MAX)
        self._audit_seq = 0
        self.sent = 0

    def mirror_audit(self, row: dict) -> None:
        self._audit.append(row)

    async def send(self) -> None:
        while self._audit:
            n = min(self.batch, len(self._audit))
            puts = []
            for row in list(self._audit)[:n]:
                self._audit_seq += 1
                key = f"{PREFIX}audit/{self.host}/{row.get('time')}-{self._audit_seq:06d}"
                puts.append({"key": _b64(key), "value": _b64(json.dumps(row))})
            if n == 1 and self.batch == 1:
                await self.pool.call("/v3/kv/put", puts[0])
            else:
                await self.pool.call("/v3/kv/txn", {"success": [{"request_put": p} for p in puts]})
            for _ in range(n):
                self._audit.popleft()
            self.sent += n


class NewMirror:
    """hookd.stores.etcd.EtcdPinStore itself, sending through the pool."""

    def __init__(self, host: str, pool: Pool):
        self.store = EtcdPinStore(StoreSettings(backend="etcd", prefix=PREFIX), host=host)
        self.store._client = pool

    def mirror_audit(self, row: dict) -> None:
        self.store.mirror_audit(row)

    async def send(self) -> None:
        await self.store.send_lastboots()


# ------------------------------------------------------------------ workload

class Fleet:
    """Instances, their hosts, and the audit rows hookd records for each operation."""

    def __init__(self, hosts: int, per_host: int, seed: int = 13):
        rng = random.Random(seed)
        self.hosts = [f"hv-{h:04d}.cloud.example" for h in range(hosts)]
        self.instances = [str(uuidlib.UUID(int=rng.getrandbits(128), version=4)) for _ in range(hosts * per_host)]
        self.projects = [str(uuidlib.UUID(int=rng.getrandbits(128), version=4)) for _ in range(50)]
        self.where = [i // per_host for i in range(len(self.instances))]
        self.rng = rng
        self.clock = datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)
        self.domain_id = 0

    def now(self) -> str:
        self.clock += datetime.timedelta(milliseconds=3)
        return self.clock.isoformat(timespec="milliseconds")

    def _row(self, i: int, host: int, operation: str, action: str, detail: str, **extra) -> dict:
        uuid = self.instances[i]
        values = {"time": self.now(), "host": self.hosts[host], "operation": operation,
                  "domain": f"instance-{i:08x}", "instance_uuid": uuid, "nova_name": f"vm-{i:06d}",
                  "project": self.projects[i % len(self.projects)], "flavor": "m1.small",
                  "serial_seen": uuid, "serial_wanted": uuid, "verdict": "compliant", "rule": "default",
                  "action": action, "detail": detail}
        values.update(extra)
        # As hookd.stores.audit.AuditLog.record hands rows to the mirror: every column, str or None.
        return {c: None if values.get(c) is None else str(values.get(c)) for c in COLUMNS}

    def _boot_key(self) -> str:
        self.domain_id += 1
        return f"{self.domain_id}:{self.clock.timestamp():.2f}"

    def reboot(self, i: int):
        h = self.where[i]
        yield h, self._row(i, h, "stopped", "shutdown", "libvirt event STOPPED/SHUTDOWN")
        yield h, self._row(i, h, "define", "unchanged", "define: the serial is the instance UUID (policy default)")
        yield h, self._row(i, h, "defined", "updated", "libvirt event DEFINED/UPDATED; serial_seen is the saved "
                                                      "definition's (next cold boot)")
        yield h, self._row(i, h, "prepare", "allow", "the serial is the instance UUID (policy default)")
        since = self.clock.isoformat(timespec="seconds")
        yield h, self._row(i, h, "started", "booted", "libvirt event STARTED/BOOTED; serial_seen is the running "
                                                      "guest's", boot=self._boot_key(), since=since)

    def migrate(self, i: int):
        src = self.where[i]
        dst = self.rng.choice([h for h in range(len(self.hosts)) if h != src]) if len(self.hosts) > 1 else src
        yield dst, self._row(i, dst, "migrate", "allow", "passed through unchanged: libvirt refuses serial "
                                                         "changes on an incoming migration")
        yield dst, self._row(i, dst, "prepare", "allow", "the serial is the instance UUID (policy default)")
        since = self.clock.isoformat(timespec="seconds")
        yield dst, self._row(i, dst, "started", "migrated", "libvirt event STARTED/MIGRATED; serial_seen is the "
                                                            "running guest's", boot=self._boot_key(), since=since)
        yield dst, self._row(i, dst, "defined", "added", "libvirt event DEFINED/ADDED; serial_seen is the saved "
                                                         "definition's (next cold boot)")
        yield src, self._row(i, src, "stopped", "migrated", "libvirt event STOPPED/MIGRATED")
        self.where[i] = dst


def phases(args, fleet: Fleet):
    """(name, outage, boots, rows generator) in workload order; same seed, same rows."""
    n = len(fleet.instances)
    movers = sorted(fleet.rng.sample(range(n), int(n * args.migrate)))
    yield "boot", False, n, (hr for i in range(n) for hr in fleet.reboot(i))
    yield "migrate", False, len(movers), (hr for i in movers for hr in fleet.migrate(i))
    yield "outage", True, n * args.outage_boots, \
        (hr for _ in range(args.outage_boots) for i in range(n) for hr in fleet.reboot(i))


async def run_scheme(scheme: str, url: str, args) -> dict:
    pool = Pool(url, args.connections)
    fleet = Fleet(args.hosts, args.instances_per_host)
    batch = 1 if args.old_unbatched else OLD_BATCH
    mirrors = [OldMirror(h, pool, batch) if scheme == "old" else NewMirror(h, pool) for h in fleet.hosts]
    out = {"phases": {}}
    t_start = time.perf_counter()
    try:
        # adopt: every host pins its instances, one create-if-absent transaction each (both schemes)
        t0 = time.perf_counter()
        before = dict(pool.requests)
        pinner = EtcdPinStore(StoreSettings(backend="etcd", prefix=PREFIX), host="adopt")

        async def adopt(h: int):
            for i in range(h * args.instances_per_host, (h + 1) * args.instances_per_host):
                uuid = fleet.instances[i]
                resp = await pool.call("/v3/kv/txn", pinner._txn_body(uuid, uuid, "hookctl adopt"))
                pinner._txn_winner(resp, uuid, PREFIX)
        await _bounded(adopt(h) for h in range(args.hosts))
        out["phases"]["adopt"] = dict(await etcd_figures(pool), operations=len(fleet.instances), rows=0,
                                      writes=_writes(pool, before), seconds=round(time.perf_counter() - t0, 1))
        for name, outage, boots, rows in phases(args, fleet):
            t0 = time.perf_counter()
            before = dict(pool.requests)
            count = 0
            touched: set = set()
            for h, row in rows:
                mirrors[h].mirror_audit(row)
                touched.add(h)
                count += 1
                # the old scheme has nothing to coalesce, and the new one sends as it goes
                # unless etcd is away: send every CHUNK rows, except during the outage (new)
                if count % args.chunk == 0 and not (outage and scheme == "new"):
                    await _bounded(mirrors[t].send() for t in touched)
                    touched.clear()
            await _bounded(mirrors[t].send() for t in touched)
            out["phases"][name] = dict(await etcd_figures(pool), operations=boots, rows=count,
                                       writes=_writes(pool, before), seconds=round(time.perf_counter() - t0, 1))
        out["before_compaction"] = await etcd_figures(pool)
        t0 = time.perf_counter()
        await pool.call("/v3/kv/compaction", {"revision": str(out["before_compaction"]["revision"]),
                                              "physical": True})
        await pool.call("/v3/maintenance/defragment", {})
        out["after_compaction_and_defrag"] = dict(await etcd_figures(pool),
                                                  seconds=round(time.perf_counter() - t0, 1))
        if scheme == "new":
            st = [m.store.status() for m in mirrors]
            out["lastboot"] = {k: sum(s[k] for s in st) for k in ("lastboot_written", "lastboot_stale",
                                                                  "lastboot_dropped", "lastboot_queued")}
        out["seconds"] = round(time.perf_counter() - t_start, 1)
        return out
    finally:
        await pool.close()


def _writes(pool: Pool, before: dict) -> int:
    return sum(v - before.get(k, 0) for k, v in pool.requests.items() if k in ("/v3/kv/txn", "/v3/kv/put"))


async def _bounded(coros, limit: int = 256):
    """Run coroutines (one per host) with at most `limit` in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            await c
    await asyncio.gather(*(one(c) for c in coros))


def _daemon_writes(scheme: str, res: dict) -> None:
    """Write requests the daemon sends: the pool's count, except that the old daemon sent
    one put per audit row where this run may have batched them."""
    for ph in res["phases"].values():
        ph["daemon_writes"] = ph["rows"] if scheme == "old" and ph["rows"] else ph["writes"]


def run(hosts: int = HOSTS, per_host: int = PER_HOST, **kw) -> dict:
    args = argparse.Namespace(hosts=hosts, instances_per_host=per_host, migrate=kw.get("migrate", 0.1),
                              outage_boots=kw.get("outage_boots", 2), connections=kw.get("connections", 32),
                              chunk=kw.get("chunk", 20_000), old_unbatched=kw.get("old_unbatched", False),
                              schemes=kw.get("schemes", ("new", "old")))
    results = {"scale": {"hosts": hosts, "instances_per_host": per_host, "instances": hosts * per_host,
                         "migrating_fraction": args.migrate, "outage_boots": args.outage_boots,
                         "connections": args.connections,
                         "old_rows_per_request": 1 if args.old_unbatched else OLD_BATCH}}
    with tempfile.TemporaryDirectory(prefix="hookd-bench-fleet-") as tmp:
        for scheme in args.schemes:
            extra = ["--quota-backend-bytes", str(OLD_QUOTA)] if scheme == "old" else []
            etcd = EtcdProcess(pathlib.Path(tmp) / scheme, extra).start(timeout=30.0)
            try:
                version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
                results["etcd"] = version.replace("etcd Version: ", "")
                print(f"  {scheme} scheme ...", flush=True)
                results[scheme] = asyncio.run(run_scheme(scheme, etcd.url, args))
                _daemon_writes(scheme, results[scheme])
            finally:
                etcd.stop()
    if "new" in results and "old" in results:
        results["ratio_old_to_new"] = _ratios(results["old"], results["new"])
        results["old_exceeds_default_quota_after"] = _quota_phase(results["old"])
    return results


def _ratios(old: dict, new: dict) -> dict:
    ob, nb = old["before_compaction"], new["before_compaction"]
    oa, na = old["after_compaction_and_defrag"], new["after_compaction_and_defrag"]
    ow = sum(p["daemon_writes"] for p in old["phases"].values())
    nw = sum(p["daemon_writes"] for p in new["phases"].values())
    return {"keys": round(ob["keys"] / nb["keys"], 1), "db_size": round(ob["db_size"] / nb["db_size"], 1),
            "db_size_after_compaction_and_defrag": round(oa["db_size"] / na["db_size"], 1),
            "write_requests": round(ow / nw, 1)}


def _quota_phase(old: dict):
    for name, ph in old["phases"].items():
        if ph["db_size"] > DEFAULT_QUOTA:
            return name
    return None


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:,.1f} MiB"


def report(r: dict) -> None:
    s = r["scale"]
    print(f"fleet: {s['hosts']:,} hosts x {s['instances_per_host']} instances = {s['instances']:,} instances; "
          f"{s['migrating_fraction']:.0%} migrate, {s['outage_boots']} boots each during an outage; "
          f"etcd {r.get('etcd')}, {s['connections']} connections shared by all hosts")
    for scheme in ("old", "new"):
        if scheme not in r:
            continue
        res = r[scheme]
        what = "one key per audit row" if scheme == "old" else "pins + one last boot per instance"
        print(f"\n{scheme} scheme ({what}), {res['seconds']} s")
        print(f"  {'phase':<8} {'operations':>10} {'audit rows':>10} {'writes':>9} {'writes/op':>9} "
              f"{'keys':>10} {'dbSize':>12} {'in use':>12}")
        for name, ph in res["phases"].items():
            w = ph["daemon_writes"]
            print(f"  {name:<8} {ph['operations']:>10,} {ph['rows']:>10,} {w:>9,} {w / max(ph['operations'], 1):>9.2f} "
                  f"{ph['keys']:>10,} {_mib(ph['db_size']):>12} {_mib(ph['db_size_in_use']):>12}")
        a = res["after_compaction_and_defrag"]
        print(f"  after compaction + defrag: {a['keys']:,} keys, dbSize {_mib(a['db_size'])} "
              f"({a['seconds']} s)")
        if scheme == "new":
            print(f"  last boots: {res['lastboot']}")
    if "ratio_old_to_new" in r:
        print(f"\nold / new: {r['ratio_old_to_new']}")
        q = r["old_exceeds_default_quota_after"]
        print("old scheme past etcd's 2 GiB default quota (NOSPACE, read-only) after phase: " + (q or "never"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=HOSTS)
    p.add_argument("--instances-per-host", type=int, default=PER_HOST)
    p.add_argument("--migrate", type=float, default=0.1, help="fraction of instances that live-migrate")
    p.add_argument("--outage-boots", type=int, default=2, help="boots per instance while etcd is away")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--old-unbatched", action="store_true", help="old scheme: one put per row (slow)")
    p.add_argument("--scheme", action="append", choices=("new", "old"), help="only this scheme (repeatable)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    try:
        r = run(a.hosts, a.instances_per_host, migrate=a.migrate, outage_boots=a.outage_boots,
                connections=a.connections, old_unbatched=a.old_unbatched,
                schemes=tuple(a.scheme or ("new", "old")))
    # AssertionError: etcd_proc's "etcd missing / did not become healthy" (a test helper's).
    except (AssertionError, RuntimeError, StoreError, OSError) as err:
        print(f"bench_fleet: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=2) if a.json else "", end="\n" if a.json else "")
    report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
