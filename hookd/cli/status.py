"""`hookctl status` and `hookctl reconcile`: the commands that ask the running daemon.

Owns printing the daemon's status and the reconciler's sweep. Both go over the hook
socket through hookd.ipc.client; it must not open a store or libvirt itself,
nor decide anything (the daemon's reconciler does the sweep).
"""

from __future__ import annotations

import json

from hookd.cli.common import EXIT_OK, CliError, load_cli_config
from hookd.ipc import client, messages


def cmd_status(args) -> int:
    sock = args.socket or load_cli_config(args).daemon.socket
    st = client.ask(sock, messages.StatusQuery())
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return EXIT_OK
    cfg = st.get("config", {})
    print(f"hookd {st.get('version')} running (pid {st.get('pid')}, up {st.get('uptime_s')} s)")
    print(f"config      {', '.join(cfg.get('sources', []))}: mode {cfg.get('mode')}, {cfg.get('rules')} rules, "
          f"on_mismatch {cfg.get('on_mismatch')}; {st.get('reloads')} reloads, {st.get('reload_failures')} rejected")
    if st.get("last_reload_error"):
        print(f"last reload rejected: {st['last_reload_error']}")
    counters = st.get("counters", {})
    print("hook        " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "no requests yet"))
    a = st.get("audit", {})
    print(f"audit       {a.get('path')}: {a.get('written')} rows written, {a.get('pending')} pending"
          + (f", FAILING: {a['failing']}" if a.get("failing") else ""))
    store = st.get("store")
    if store is not None:
        if store.get("backend") == "etcd":
            print(f"store       etcd {', '.join(store.get('endpoints', []))}: "
                  f"{'reachable' if store.get('reachable') else 'UNREACHABLE (' + str(store.get('last_error')) + ')'}"
                  f"; {store.get('cached')} pins cached, {store.get('queued')} queued, "
                  f"{store.get('conflicts')} conflicts")
        else:
            print(f"store       sqlite {store.get('path')}")
    proxy = st.get("proxy")
    if proxy is not None:
        print(f"proxy       {proxy.get('clients_connected')} clients connected, "
              f"{proxy.get('definitions_rewritten')} of {proxy.get('definitions_seen')} definitions rewritten, "
              f"{proxy.get('clients_refused')} refused, {proxy.get('clients_over_limit', 0)} over the "
              f"client limit, {proxy.get('errors')} errors")
        up = proxy.get("upstream")
        if isinstance(up, dict):
            print(f"upstream    {up.get('why')}")
    ev = st.get("events")
    if ev is not None:
        print(f"libvirt     {'connected' if ev.get('connected') else 'DISCONNECTED'} to {ev.get('uri')}; "
              f"{ev.get('reconnects')} reconnects, {ev.get('events')} events")
        print(f"boots       {ev.get('open_boots', 0)} running guests recorded; {ev.get('resyncs', 0)} resyncs "
              "(after each connect to libvirt)")
    rec = st.get("reconcile")
    if rec is not None:
        print(f"reconcile   {rec.get('sweeps')} sweeps, {rec.get('fixed')} definitions fixed")
    return EXIT_OK


def cmd_reconcile(args) -> int:
    sock = args.socket or load_cli_config(args).daemon.socket
    reply = client.ask(sock, messages.ReconcileQuery(dry_run=bool(args.dry_run)), timeout=args.timeout)
    if reply.get("error"):
        raise CliError(f"reconcile: {reply['error']}")
    items = reply.get("items", [])
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return EXIT_OK
    verb = "would change" if args.dry_run else "changed"
    changes = [i for i in items if i.get("action") in ("fixed", "would-fix")]
    for i in items:
        print(f"{i.get('action', '?'):<10} {i.get('domain', '-'):<24} {i.get('instance_uuid', '-')}  "
              f"saved serial {i.get('serial_saved')!r} -> policy {i.get('serial_policy')!r}"
              + (f"  ({i['detail']})" if i.get("detail") else ""))
    print(f"{len(items)} domains checked, {len(changes)} {verb}")
    return EXIT_OK
