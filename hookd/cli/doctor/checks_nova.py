"""doctor's checks of nova-compute's configuration: [libvirt] connection_uri (through
hookd's proxy or not) and sysinfo_serial (what Nova writes, against hookd's mode).

Owns reading nova.conf plus nova.conf.d/*.conf the way oslo.config layers them, leniently
and read-only; it must not write them or talk to Nova or libvirt.
"""

from __future__ import annotations

import configparser
import glob
import os
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from hookd.cli.doctor.base import FAIL, OK, WARN, Check

DEFAULT_NOVA_CONF = "/etc/nova/nova.conf"
NOVA_SYSINFO_CHOICES = ("none", "os", "hardware", "auto", "unique")
NOVA_SYSINFO_DEFAULT = "unique"


def _uri_socket(uri: str) -> Optional[str]:
    """The ?socket= of a libvirt URI, if any."""
    try:
        values = parse_qs(urlsplit(uri).query).get("socket")
    except ValueError:
        return None
    return values[-1] if values else None


def read_nova_conf(path: Optional[str]):
    """(parser, files read, problem) for nova.conf plus nova.conf.d/*.conf."""
    explicit = path is not None
    path = path or DEFAULT_NOVA_CONF
    if not os.path.exists(path):
        return None, [], (FAIL if explicit else WARN), f"{path} does not exist"
    files = [path] + sorted(glob.glob(os.path.join(os.path.dirname(path), "nova.conf.d", "*.conf")))
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        read = parser.read(files, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as err:
        msg = str(err).replace("\n", " ")
        return None, files, FAIL, f"cannot parse: {msg}"
    if path not in read:
        return None, files, FAIL, f"cannot read {path}"
    return parser, read, None, None


def _nova_get(parser, key: str) -> Optional[str]:
    if parser is None or not parser.has_section("libvirt"):
        return None
    value = parser.get("libvirt", key, fallback=None)
    return value.strip() if value is not None else None


def check_nova_uri(parser, files, cfg) -> Check:
    from hookd.config import DaemonSettings
    d = cfg.daemon if cfg is not None else DaemonSettings()
    proxy = d.proxy_socket
    uri = _nova_get(parser, "connection_uri") or ""
    shown = uri or "'' (Nova's default, qemu:///system)"
    target = _uri_socket(uri) if uri else None
    at_proxy = target is not None and os.path.normpath(target) == os.path.normpath(proxy or "/nonexistent")
    if not proxy:
        if target and target.startswith(os.path.dirname(d.socket) + "/"):
            return Check(FAIL, "nova-uri", f"connection_uri = {shown} points into hookd's directory, "
                                           f"but [hookd] proxy_socket is empty (proxy off)",
                         "set [hookd] proxy_socket, or reset nova's connection_uri and restart nova-compute")
        return Check(OK, "nova-uri", f"proxy off; nova-compute uses {shown}, the hooks and the "
                                     f"reconciler enforce the policy")
    if at_proxy:
        return Check(OK, "nova-uri", f"nova-compute connects through hookd's proxy ({shown})")
    return Check(WARN, "nova-uri",
                 f"connection_uri = {shown}: nova-compute bypasses hookd's proxy at {proxy}, so its "
                 f"definitions reach libvirt unrewritten (the prepare hook and the reconciler still check)",
                 f"set [libvirt] connection_uri = qemu+unix:///system?socket={proxy} in "
                 f"{files[0] if files else DEFAULT_NOVA_CONF} and restart nova-compute")


def check_nova_sysinfo(parser, cfg) -> Check:
    value = _nova_get(parser, "sysinfo_serial")
    default = value is None or value == ""
    v = NOVA_SYSINFO_DEFAULT if default else value.lower()
    shown = f"{v} (Nova's default)" if default else v
    mode = cfg.policy.mode if cfg is not None else "unique"
    if v not in NOVA_SYSINFO_CHOICES:
        return Check(FAIL, "nova-sysinfo", f"sysinfo_serial = {value!r} is not one of "
                                           f"{', '.join(NOVA_SYSINFO_CHOICES)}: nova-compute refuses to start",
                     "fix [libvirt] sysinfo_serial in nova.conf")
    if v == "unique":
        return Check(OK, "nova-sysinfo", f"sysinfo_serial = {shown}: Nova sets serial = instance UUID "
                                         f"itself; hookd verifies and applies your exceptions (mode {mode})")
    if v == "none":
        if mode == "host":
            return Check(WARN, "nova-sysinfo", "sysinfo_serial = none: Nova writes no serial and hookd's "
                                               "mode host keeps it that way: guests have no serial",
                         "set [policy] mode = unique, or a rule, for the guests that need one")
        return Check(OK, "nova-sysinfo", f"sysinfo_serial = none: Nova writes no serial; hookd adds the "
                                         f"policy serial (mode {mode})")
    if mode == "host" and cfg is not None and not cfg.policy.rules:
        return Check(WARN, "nova-sysinfo", f"sysinfo_serial = {v}: a host-derived serial, the same for "
                                           f"every guest on this host, and hookd's mode host keeps it",
                     "set [policy] mode = unique or add rules for the guests that need their own")
    return Check(OK, "nova-sysinfo", f"sysinfo_serial = {v}: Nova writes a host-derived serial "
                                     f"(the same for every guest here); hookd rewrites it (mode {mode})")
