"""hookd's configuration: INI files in, validated settings out.

Owns the file format (a main file plus conf.d/*.conf in name order, later files
overriding keys), the schema of every section and key with its default, and the
file:line:reason of every error. It builds hookd.policy.serial.PolicyConfig but decides
nothing, and it never reads XML or talks to libvirt.

configparser is not used: it cannot say on which line a bad value stands, and an
operator editing /etc/hookd on a hypervisor needs exactly that.
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from hookd.errors import ConfigError
from hookd.policy.model import canonical_uuid
from hookd.policy.serial import MODES, NON_NOVA_CHOICES, PolicyConfig, Rule, SerialTemplate

DEFAULT_CONFIG = "/etc/hookd/hookd.conf"
CONF_D = "conf.d"
RULE_PREFIX = "rule:"
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
              "0": False, "false": False, "no": False, "off": False}
LOG_LEVELS = ("debug", "info", "warning", "error")
ON_MISMATCH = ("warn", "deny")


@dataclass(frozen=True)
class Setting:
    """One key's value and where it came from."""
    value: str
    path: str
    line: int


@dataclass
class RawSection:
    name: str
    path: str
    line: int
    keys: Dict[str, Setting] = field(default_factory=dict)
    #: Values a later line or file overrode: still validated, so a mistake does not
    #: lie in wait until the file that hides it is removed.
    shadowed: List[Tuple[str, Setting]] = field(default_factory=list)


def parse_ini(text: str, path: str, into: Dict[str, RawSection]) -> None:
    """Merge one file's sections into `into` (insertion order = first appearance)."""
    section: Optional[RawSection] = None
    last: Optional[Tuple[RawSection, str]] = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if raw[0] in " \t" and last is not None:
            # configparser-style continuation line: long lists of UUIDs.
            sec, key = last
            old = sec.keys[key]
            sec.keys[key] = Setting(f"{old.value}\n{stripped}", old.path, old.line)
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3:
                raise ConfigError(f"malformed section header {stripped!r}", path, lineno)
            name = stripped[1:-1].strip()
            section = into.get(name)
            if section is None:
                section = into[name] = RawSection(name, path, lineno)
            last = None
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"expected 'key = value' or '[section]', got {stripped[:60]!r}", path, lineno)
        key = key.strip().lower()
        if not key:
            raise ConfigError("missing key before '='", path, lineno)
        if section is None:
            raise ConfigError(f"key {key!r} is outside any [section]", path, lineno)
        if key in section.keys:
            section.shadowed.append((key, section.keys[key]))
        section.keys[key] = Setting(value.strip(), path, lineno)
        last = (section, key)


# ---------------------------------------------------------------- value parsers

def _bool(s: Setting) -> bool:
    try:
        return BOOL_WORDS[s.value.lower()]
    except KeyError:
        raise ConfigError(f"expected true or false, got {s.value!r}", s.path, s.line) from None


def _choice(*choices) -> Callable[[Setting], str]:
    def parse(s: Setting) -> str:
        v = s.value.lower()
        if v not in choices:
            raise ConfigError(f"expected one of {', '.join(choices)}, got {s.value!r}", s.path, s.line)
        return v
    return parse


def _float(lo: float, hi: float) -> Callable[[Setting], float]:
    def parse(s: Setting) -> float:
        try:
            v = float(s.value)
        except ValueError:
            raise ConfigError(f"expected a number, got {s.value!r}", s.path, s.line) from None
        if not lo <= v <= hi:
            raise ConfigError(f"expected a number from {lo:g} to {hi:g}, got {s.value!r}", s.path, s.line)
        return v
    return parse


def _int(lo: int, hi: int) -> Callable[[Setting], int]:
    def parse(s: Setting) -> int:
        try:
            v = int(s.value)
        except ValueError:
            raise ConfigError(f"expected a whole number, got {s.value!r}", s.path, s.line) from None
        if not lo <= v <= hi:
            raise ConfigError(f"expected a whole number from {lo} to {hi}, got {s.value!r}", s.path, s.line)
        return v
    return parse


def _path(s: Setting) -> str:
    if s.value and not s.value.startswith("/"):
        raise ConfigError(f"expected an absolute path, got {s.value!r}", s.path, s.line)
    return s.value


def _socket_or_auto(s: Setting) -> str:
    """An absolute path, or `auto` (hookd.rpc.upstream: virtqemud's socket if present, else libvirtd's)."""
    if s.value == "auto":
        return s.value
    if not s.value:
        raise ConfigError("expected auto or an absolute path, got nothing", s.path, s.line)
    return _path(s)


def _text(s: Setting) -> str:
    return s.value


def _group(s: Setting) -> str:
    v = s.value
    if not v:
        raise ConfigError("expected a group name", s.path, s.line)
    return v


def _list(s: Setting) -> List[str]:
    return [item for item in s.value.replace(",", " ").split() if item]


def _uuid_list(s: Setting, *, dashed: bool = True) -> frozenset:
    out = set()
    for item in _list(s):
        u = canonical_uuid(item)
        if u is None:
            raise ConfigError(f"{item!r} is not a UUID", s.path, s.line)
        out.add(u if dashed else u.replace("-", ""))
    if not out:
        raise ConfigError("expected at least one UUID", s.path, s.line)
    return frozenset(out)


def _endpoints(s: Setting) -> tuple:
    out = []
    for item in _list(s):
        if not (item.startswith("http://") or item.startswith("https://")) or item.count(":") != 2:
            raise ConfigError(f"endpoint {item!r}: expected http://HOST:PORT or https://HOST:PORT", s.path, s.line)
        out.append(item.rstrip("/"))
    return tuple(out)


def _template(s: Setting) -> Optional[SerialTemplate]:
    if not s.value:
        return None
    return SerialTemplate.compile(s.value, path=s.path, line=s.line)


# ------------------------------------------------------------------ the schema

# section -> key -> (parser, default). These names are hookd's public interface.
SCHEMA: Dict[str, Dict[str, Tuple[Callable, object]]] = {
    "policy": {
        "mode": (_choice(*MODES), "unique"),
        "template": (_template, None),
        "host_serial_to_chassis": (_bool, False),
        "honour_flavor_and_image": (_bool, True),
        "non_nova": (_choice(*NON_NOVA_CHOICES), "ignore"),
    },
    "hookd": {
        "socket": (_path, "/run/hookd/hookd.sock"),
        "state_dir": (_path, "/var/lib/hookd"),
        "log_level": (_choice(*LOG_LEVELS), "info"),
        "proxy_socket": (_path, "/run/hookd/libvirt-sock"),
        "libvirt_socket": (_socket_or_auto, "auto"),
        "proxy_group": (_group, "libvirt"),
        "proxy_max_clients": (_int(1, 65536), 256),
        "libvirt_uri": (_text, "qemu:///system"),
    },
    "enforce": {
        "on_mismatch": (_choice(*ON_MISMATCH), "warn"),
    },
    "reconcile": {
        "enabled": (_bool, True),
        "interval": (_float(0, 86400), 600.0),
    },
    "store": {
        "backend": (_choice("sqlite", "etcd"), "sqlite"),
        "endpoints": (_endpoints, ("http://127.0.0.1:2379",)),
        "prefix": (_text, "/hookd/"),
        "cert_file": (_path, ""),
        "key_file": (_path, ""),
        "ca_file": (_path, ""),
        "timeout": (_float(0.1, 60), 2.0),
    },
    "metrics": {
        "textfile_dir": (_path, ""),
        "interval": (_float(1, 3600), 15.0),
        "socket": (_path, ""),
    },
}
RULE_KEYS = ("instance", "project", "flavor", "image", "mode", "template")


@dataclass(frozen=True)
class DaemonSettings:
    socket: str = "/run/hookd/hookd.sock"
    state_dir: str = "/var/lib/hookd"
    log_level: str = "info"
    proxy_socket: str = "/run/hookd/libvirt-sock"
    libvirt_socket: str = "auto"
    proxy_group: str = "libvirt"
    proxy_max_clients: int = 256
    libvirt_uri: str = "qemu:///system"


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    endpoints: Tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/hookd/"
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    timeout: float = 2.0


@dataclass(frozen=True)
class MetricsSettings:
    textfile_dir: str = ""          # empty: no textfile
    interval: float = 15.0
    socket: str = ""                # empty: no metrics socket


@dataclass(frozen=True)
class Config:
    policy: PolicyConfig = PolicyConfig()
    daemon: DaemonSettings = DaemonSettings()
    on_mismatch: str = "warn"
    reconcile_enabled: bool = True
    reconcile_interval: float = 600.0
    sources: Tuple[str, ...] = ()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()

    @property
    def config_dir(self) -> Optional[str]:
        return os.path.dirname(self.sources[0]) if self.sources else None


def config_files(path: str) -> List[str]:
    """The main file followed by its conf.d/*.conf in name order."""
    files = [path]
    confd = os.path.join(os.path.dirname(path), CONF_D)
    try:
        names = sorted(n for n in os.listdir(confd) if n.endswith(".conf") and not n.startswith("."))
    except FileNotFoundError:
        names = []
    except OSError as err:
        raise ConfigError(f"cannot list {confd}: {err.strerror}") from err
    files.extend(os.path.join(confd, n) for n in names)
    return files


def load_config(path: Optional[str] = None) -> Config:
    """Read and validate the configuration.

    `path` None means the default file, which may be absent (defaults apply); an
    explicitly named file must exist.
    """
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    sections: Dict[str, RawSection] = {}
    sources = []
    for n, file in enumerate(config_files(path)):
        try:
            with open(file, "rb") as f:
                data = f.read()
        except FileNotFoundError as err:
            if n == 0 and not explicit:
                continue
            raise ConfigError("no such file", file) from err
        except OSError as err:
            raise ConfigError(f"cannot read: {err.strerror}", file) from err
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[:err.start].count(b"\n") + 1
            raise ConfigError("not valid UTF-8", file, line) from err
        parse_ini(text, file, sections)
        sources.append(file)
    return build_config(sections, tuple(sources) or (path,))


def build_config(sections: Dict[str, RawSection], sources: Tuple[str, ...]) -> Config:
    values: Dict[str, Dict[str, object]] = {}
    rules: List[Rule] = []
    for name, sec in sections.items():
        if name.startswith(RULE_PREFIX):
            continue
        schema = SCHEMA.get(name)
        if schema is None:
            known = ", ".join(f"[{s}]" for s in SCHEMA) + ", [rule:NAME]"
            raise ConfigError(f"unknown section [{name}] (known: {known})", sec.path, sec.line)
        out = values.setdefault(name, {})
        for key, setting in sec.shadowed + list(sec.keys.items()):
            if key not in schema:
                raise ConfigError(f"unknown key {key!r} in [{name}] (known: {', '.join(schema)})",
                                  setting.path, setting.line)
            out[key] = schema[key][0](setting)      # the live value comes last

    def get(section, key):
        return values.get(section, {}).get(key, SCHEMA[section][key][1])

    default_template = get("policy", "template")
    mode = get("policy", "mode")
    if mode == "template" and default_template is None:
        s = sections["policy"].keys["mode"]
        raise ConfigError("mode = template needs a 'template =' in [policy]", s.path, s.line)
    for name, sec in sections.items():
        if name.startswith(RULE_PREFIX):
            rules.append(_build_rule(sec, default_template))
    policy = PolicyConfig(
        mode=mode, template=default_template,
        host_serial_to_chassis=get("policy", "host_serial_to_chassis"),
        honour_flavor_and_image=get("policy", "honour_flavor_and_image"),
        non_nova=get("policy", "non_nova"), rules=tuple(rules))
    daemon = DaemonSettings(**{k: get("hookd", k) for k in SCHEMA["hookd"]})
    store = StoreSettings(**{k: get("store", k) for k in SCHEMA["store"]})
    metrics = MetricsSettings(**{k: get("metrics", k) for k in SCHEMA["metrics"]})
    if store.backend == "etcd" and bool(store.cert_file) != bool(store.key_file):
        s = (sections["store"].keys.get("cert_file") or sections["store"].keys.get("key_file"))
        raise ConfigError("cert_file and key_file go together", s.path, s.line)
    if not store.prefix.startswith("/") or not store.prefix.endswith("/"):
        s = sections["store"].keys["prefix"]
        raise ConfigError(f"prefix {store.prefix!r} must start and end with '/'", s.path, s.line)
    return Config(policy=policy, daemon=daemon, on_mismatch=get("enforce", "on_mismatch"),
                  reconcile_enabled=get("reconcile", "enabled"),
                  reconcile_interval=get("reconcile", "interval"), sources=sources, store=store,
                  metrics=metrics)


def _build_rule(sec: RawSection, default_template) -> Rule:
    name = sec.name[len(RULE_PREFIX):].strip()
    if not name:
        raise ConfigError("a rule needs a name: [rule:NAME]", sec.path, sec.line)
    for key, s in sec.keys.items():
        if key not in RULE_KEYS:
            raise ConfigError(f"unknown key {key!r} in [rule:{name}] (known: {', '.join(RULE_KEYS)})",
                              s.path, s.line)
    for key, s in sec.shadowed:
        if key not in RULE_KEYS:
            raise ConfigError(f"unknown key {key!r} in [rule:{name}] (known: {', '.join(RULE_KEYS)})",
                              s.path, s.line)
        {"mode": _choice(*MODES), "template": _template, "instance": _uuid_list, "image": _uuid_list,
         "project": lambda v: _uuid_list(v, dashed=False), "flavor": _text}[key](s)
    keys = sec.keys
    if "mode" not in keys:
        raise ConfigError(f"[rule:{name}] needs 'mode ='", sec.path, sec.line)
    mode = _choice(*MODES)(keys["mode"])
    template = _template(keys["template"]) if "template" in keys else None
    if mode == "template" and template is None and default_template is None:
        s = keys["mode"]
        raise ConfigError(f"[rule:{name}] mode = template needs a 'template =' here or in [policy]",
                          s.path, s.line)
    flavor = None
    if "flavor" in keys:
        flavor = keys["flavor"].value
        if not flavor:
            s = keys["flavor"]
            raise ConfigError("flavor = needs a name or glob", s.path, s.line)
    return Rule(
        name=name, mode=mode, template=template,
        instances=_uuid_list(keys["instance"]) if "instance" in keys else None,
        projects=_uuid_list(keys["project"], dashed=False) if "project" in keys else None,
        images=_uuid_list(keys["image"]) if "image" in keys else None,
        flavor=flavor)


def resolve_group(name: str) -> int:
    """gid of a group name or number (the proxy socket's group)."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"[hookd] proxy_group: no group named {name!r} on this host") from None
