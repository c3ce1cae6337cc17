"""Hypervisors of one fleet on one machine: a hookd whose host name is its own.

hookd names its host with gethostname() (the audit rows' `host`, etcd's last boots), so
two daemons here would both be this machine. `NamedHookd` runs hookd in a UTS namespace
of its own (unshare --uts) whose host name it sets before exec'ing the daemon: the pid
is hookd's (no fork), so it is waited on and stopped by pid like any HookdProcess. Only
the host name differs; mounts, network and the test's libvirtd sockets are the
machine's. Needs root (the integration suites run as root).
"""

from __future__ import annotations

import sys

from tests.harness.hookd_proc import HookdProcess

#: Sets the host name inside the new UTS namespace, then becomes the daemon (same pid).
_EXEC_AS = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
            "os.execv(sys.executable, [sys.executable, '-m', 'hookd.daemon', '--config', sys.argv[2]])")


class NamedHookd(HookdProcess):
    def __init__(self, workdir, *, hostname: str, **kw):
        self.hostname = hostname
        super().__init__(workdir, **kw)

    def daemon_argv(self) -> list:
        return ["unshare", "--uts", sys.executable, "-c", _EXEC_AS, self.hostname, str(self.config)]
