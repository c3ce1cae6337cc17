"""Where hookd keeps state: pins (SQLite or etcd) and the host's audit log. Stores decide
nothing.
"""

from __future__ import annotations

import os

from hookd.stores.pins import PINS_DB, SqlitePinStore


def open_store(config, host: str = ""):
    """The pin store the configuration names (hookctl and the daemon alike)."""
    if config.store.backend == "etcd":
        from hookd.stores.etcd import EtcdPinStore   # its client is not loaded for SQLite
        return EtcdPinStore(config.store, host=host, state_dir=config.daemon.state_dir)
    return SqlitePinStore(config.daemon.state_dir, host=host)


def read_only_pin_lookup(config):
    """Pin lookups for the commands that only look (explain, rewrite, doctor): they never
    create a store or a pin. None when the SQLite store does not exist yet (no pins)."""
    if config.store.backend == "sqlite" and not os.path.exists(os.path.join(config.daemon.state_dir, PINS_DB)):
        return None
    return open_store(config).get
