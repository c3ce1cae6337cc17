"""The daemon's side of the libvirt worker (placeholder: no worker yet).

The worker process holds hookd's own libvirt connection (events, reconciler), so
that the process serving hooks never makes a blocking libvirt call.
"""

from __future__ import annotations

from typing import Optional


class WorkerSupervisor:
    def __init__(self, config_path: Optional[str], audit):
        self.config_path = config_path
        self.audit = audit

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def reload(self) -> None:
        return None

    def note_hook(self, instance_uuid: str, op: str) -> None:
        return None

    def status(self) -> dict:
        return {}

    async def reconcile(self, dry_run: bool) -> dict:
        return {"v": 1, "error": "the libvirt worker is not available in this build"}
