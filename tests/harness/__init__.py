"""Test harness for hookd's real-libvirt tests.

Owns the machinery that runs a REAL libvirtd + virtlogd + QEMU (TCG) in an
isolated private mount namespace (:mod:`tests.harness.libvirt_host`) and the
tiny real Linux guest that prints its own DMI serial (:mod:`tests.harness.guest`).
Nothing here touches the host's /etc/libvirt, /run/libvirt or /var/lib/libvirt.
"""
