"""The daemon's settings: defaults, TOML file, command line on top; bad files are refused."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from alg.daemon.settings import Settings, load


def test_defaults_without_a_file() -> None:
    s = load(None, {})
    assert s.core.control_ports == frozenset({21, 2121})
    assert (s.queue_num, s.fail_closed, s.core.allow_fxp, s.core.min_data_port) == (
        0,
        False,
        False,
        1024,
    )
    assert s == Settings()


def test_file_then_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "ftp-alg.toml"
    cfg.write_text(
        "[gateway]\ncontrol_ports = [21, 990]\nallow_fxp = true\nexpect_timeout = 30.0\n"
        'announce = { "198.51.100.1" = "203.0.113.5" }\n'
        "[daemon]\nqueue_num = 3\nfail_closed = true\nport_range = [40000, 41000]\n"
    )
    s = load(str(cfg), {"queue_num": 7, "allow_fxp": None})
    assert s.queue_num == 7  # the command line wins
    assert s.core.allow_fxp is True  # None on the command line: the file's value stays
    assert s.core.control_ports == frozenset({21, 990})
    assert s.core.expect_timeout == 30.0 and s.fail_closed is True
    assert s.port_range == (40000, 41000)
    out = ipaddress.ip_address("198.51.100.1").packed
    assert s.core.announce == {out: ipaddress.ip_address("203.0.113.5").packed}


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[gateway]\nallow_fxpp = true\n")
    with pytest.raises(ValueError, match="allow_fxpp"):
        load(str(cfg), {})


def test_bad_toml_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[gateway\n")
    with pytest.raises(ValueError):
        load(str(cfg), {})


@pytest.mark.parametrize(
    "line",
    [
        'hold_timeout = "x"',
        "max_line = -1",
        "allow_fxp = 1",
        "control_ports = [0]",
        "control_ports = []",
        'log_level = "loud"',
        "queue_num = true",
    ],
)
def test_values_of_the_wrong_type_are_refused_at_start(tmp_path: Path, line: str) -> None:
    cfg = tmp_path / "bad.toml"
    section = "daemon" if line.split()[0] in ("log_level", "queue_num") else "gateway"
    cfg.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(ValueError, match="is not valid"):
        load(str(cfg), {})
