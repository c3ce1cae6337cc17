"""Which libvirt daemon socket hookd's proxy relays to: `[hookd] libvirt_socket`.

An explicit path wins. `auto` (the default) chooses as libvirt's own client does for
qemu:///system in its "auto" mode (libvirt src/remote/remote_sockets.c): the modular
QEMU daemon's socket when it exists (virtqemud: RHEL 9, Fedora, SLES 15 SP6+, and on
such hosts the qemu hooks run there), else the monolithic libvirtd's. The choice is
made again at every connection, so a libvirt that starts after hookd, or a host moved
from libvirtd to virtqemud, needs no restart of hookd.

It only looks at the filesystem; it never connects and decides nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

AUTO = "auto"
#: virtqemud's read-write socket (modular daemons).
MODULAR_SOCKET = "/run/libvirt/virtqemud-sock"
#: libvirtd's (monolithic), or on a modular host virtproxyd's, one hop further.
MONOLITHIC_SOCKET = "/run/libvirt/libvirt-sock"


@dataclasses.dataclass(frozen=True)
class Upstream:
    path: str
    daemon: str         # "virtqemud", "libvirtd", "configured" or "none"
    why: str            # for the start-up log, hookctl status and doctor

    @property
    def found(self) -> bool:
        return self.daemon != "none"


def resolve(setting: str, exists: Callable[[str], bool] = os.path.exists) -> Upstream:
    if setting != AUTO:
        return Upstream(setting, "configured", f"{setting} ([hookd] libvirt_socket)")
    if exists(MODULAR_SOCKET):
        return Upstream(MODULAR_SOCKET, "virtqemud", f"{MODULAR_SOCKET} (auto: the modular virtqemud's socket exists)")
    if exists(MONOLITHIC_SOCKET):
        return Upstream(MONOLITHIC_SOCKET, "libvirtd",
                        f"{MONOLITHIC_SOCKET} (auto: no {MODULAR_SOCKET}, so libvirtd's)")
    return Upstream(MONOLITHIC_SOCKET, "none",
                    f"neither {MODULAR_SOCKET} (virtqemud) nor {MONOLITHIC_SOCKET} (libvirtd) exists yet "
                    "(auto: looked at again for every connection)")
