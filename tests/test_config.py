"""Configuration files: layering, schema, and file:line:reason errors."""

from __future__ import annotations

import pytest

from hookd.config import DEFAULT_CONFIG, load_config
from hookd.errors import ConfigError
from tests.harness.domains import UUID


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path):
    cfg = load_config(None) if not __import__("os").path.exists(DEFAULT_CONFIG) else None
    if cfg is None:
        pytest.fail(f"{DEFAULT_CONFIG} exists on this machine; the test needs it absent")
    assert (cfg.policy.mode, cfg.policy.non_nova, cfg.on_mismatch) == ("unique", "ignore", "warn")
    assert cfg.daemon.socket == "/run/hookd/hookd.sock" and cfg.daemon.proxy_group == "libvirt"


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.conf"))


def test_conf_d_in_name_order_later_overrides(tmp_path):
    main = write(tmp_path / "hookd.conf", "[policy]\nmode = host\n")
    write(tmp_path / "conf.d" / "20-b.conf", "[policy]\nmode = unique\n")
    write(tmp_path / "conf.d" / "10-a.conf", "[policy]\nmode = template\ntemplate = {uuid}\n")
    write(tmp_path / "conf.d" / "README", "[garbage\n")            # not *.conf: ignored
    cfg = load_config(str(main))
    assert cfg.policy.mode == "unique" and cfg.policy.template.text == "{uuid}"
    assert [p.rsplit("/", 1)[-1] for p in cfg.sources] == ["hookd.conf", "10-a.conf", "20-b.conf"]


def test_rules_keep_first_appearance_order_across_files(tmp_path):
    main = write(tmp_path / "hookd.conf", "[rule:b]\nmode = host\n[rule:a]\nmode = host\n")
    write(tmp_path / "conf.d" / "x.conf", "[rule:c]\nmode = unique\n[rule:b]\nmode = unique\n")
    rules = load_config(str(main)).policy.rules
    assert [(r.name, r.mode) for r in rules] == [("b", "unique"), ("a", "host"), ("c", "unique")]


def test_continuation_lines_extend_lists(tmp_path):
    other = "00000000-0000-0000-0000-000000000001"
    main = write(tmp_path / "hookd.conf", f"[rule:r]\ninstance = {UUID},\n    {other}\nmode = host\n")
    assert load_config(str(main)).policy.rules[0].instances == {UUID, other}


@pytest.mark.parametrize("text,line,fragment", [
    ("[policy]\nmode = sometimes\n", 2, "expected one of unique, host, template"),
    ("[policy\n", 1, "malformed section header"),
    ("mode = unique\n", 1, "outside any [section]"),
    ("[polcy]\n", 1, "unknown section [polcy]"),
    ("[policy]\nmdoe = unique\n", 2, "unknown key 'mdoe'"),
    ("[policy]\njust words\n", 2, "expected 'key = value'"),
    ("[policy]\nhost_serial_to_chassis = perhaps\n", 2, "expected true or false"),
    ("[policy]\n\nmode = template\n", 3, "needs a 'template ='"),
    ("[policy]\ntemplate = {bogus}\n", 2, "unknown placeholder {bogus}"),
    ("[rule:x]\ninstance = not-a-uuid\nmode = host\n", 2, "'not-a-uuid' is not a UUID"),
    ("[rule:x]\nproject = 123\nmode = host\n", 2, "'123' is not a UUID"),
    ("[rule:x]\nimage = ,\nmode = host\n", 2, "at least one UUID"),
    ("[rule:x]\ninstance = " + UUID + "\n", 1, "needs 'mode ='"),
    ("[rule:x]\ncolour = red\nmode = host\n", 2, "unknown key 'colour'"),
    ("[rule:]\nmode = host\n", 1, "needs a name"),
    ("[rule:x]\nmode = template\n", 2, "needs a 'template ='"),
    ("[hookd]\nsocket = relative/path\n", 2, "absolute path"),
    ("[reconcile]\ninterval = -1\n", 2, "from 0 to 86400"),
    ("[hookd]\nproxy_max_clients = 0\n", 2, "a whole number from 1 to 65536"),
    ("[hookd]\nproxy_max_clients = 2.5\n", 2, "expected a whole number, got '2.5'"),
    ("[enforce]\non_mismatch = shout\n", 2, "expected one of warn, deny"),
])
def test_errors_name_file_line_and_reason(tmp_path, text, line, fragment):
    main = write(tmp_path / "hookd.conf", text)
    with pytest.raises(ConfigError) as err:
        load_config(str(main))
    assert err.value.path == str(main) and err.value.line == line
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"{main}:{line}: ")


def test_error_in_conf_d_names_that_file(tmp_path):
    main = write(tmp_path / "hookd.conf", "[policy]\nmode = unique\n")
    bad = write(tmp_path / "conf.d" / "50-x.conf", "\n\n[enforce]\non_mismatch = maybe\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(main))
    assert (err.value.path, err.value.line) == (str(bad), 4)


def test_invalid_utf8_names_the_line(tmp_path):
    main = tmp_path / "hookd.conf"
    main.write_bytes(b"[policy]\n# \xff\n")
    with pytest.raises(ConfigError, match=r":2: not valid UTF-8"):
        load_config(str(main))


def test_every_documented_key_is_in_the_sample_config():
    """packaging/hookd.conf documents every key of the schema (the public interface)."""
    from hookd.config import RULE_KEYS, SCHEMA
    from tests.harness.run import REPO
    sample = (REPO / "packaging" / "hookd.conf").read_text()
    readme = (REPO / "README.md").read_text()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in sample, section
        for key in keys:
            assert f"# {key} =" in sample or f"\n{key} =" in sample, f"{section}.{key} missing from sample"
            assert f"`{key}`" in readme, f"{section}.{key} missing from README"
    for key in RULE_KEYS:
        assert f"{key} =" in sample and f"`{key}`" in readme


def test_sample_config_is_valid(tmp_path):
    from tests.harness.run import REPO
    cfg = load_config(str(REPO / "packaging" / "hookd.conf"))
    assert cfg.policy.mode == "unique"


def test_a_bad_value_hidden_by_a_later_file_is_still_an_error(tmp_path):
    """Removing the file that hides a mistake must not be what reveals it."""
    main = write(tmp_path / "hookd.conf", "[policy]\nmode = bogus\n[rule:r]\ninstance = nope\nmode = host\n")
    write(tmp_path / "conf.d" / "10-fix.conf", f"[policy]\nmode = host\n[rule:r]\ninstance = {UUID}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(main))
    assert (err.value.path, err.value.line) == (str(main), 2)
    write(tmp_path / "hookd.conf", "[policy]\nmode = host\n[rule:r]\ninstance = nope\nmode = host\n")
    with pytest.raises(ConfigError, match="'nope' is not a UUID") as err:
        load_config(str(main))
    assert err.value.line == 4


def test_metrics_are_off_by_default_and_read_when_set(tmp_path):
    assert load_config(str(write(tmp_path / "hookd.conf", "[policy]\n"))).metrics.textfile_dir == ""
    cfg = load_config(str(write(tmp_path / "hookd.conf",
                                "[metrics]\ntextfile_dir = /var/lib/prometheus/node-exporter\ninterval = 5\n")))
    assert (cfg.metrics.textfile_dir, cfg.metrics.interval) == ("/var/lib/prometheus/node-exporter", 5.0)


@pytest.mark.parametrize("body,message", [
    ("textfile_dir = node-exporter", ":2: expected an absolute path, got 'node-exporter'"),
    ("interval = 0.5", ":2: expected a number from 1 to 3600, got '0.5'"),
    ("interval = often", ":2: expected a number, got 'often'"),
    ("listen = :9100", ":2: unknown key 'listen' in [metrics] (known: textfile_dir, interval, socket)"),
])
def test_a_bad_metrics_value_names_file_line_and_reason(tmp_path, body, message):
    path = write(tmp_path / "hookd.conf", f"[metrics]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == f"{path}{message}"
