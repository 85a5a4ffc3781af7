"""The daemon's settings: defaults, TOML file, command line on top; bad files are refused."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from alg.daemon.settings import Settings, SettingsError, load


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


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[daemon]\nport_range = [41000, 40000]\n", "reversed"),
        ("[daemon]\nport_range = [0, 40000]\n", r"\[low, high\]"),
        ("[daemon]\nport_range = [1024, 70000]\n", r"\[low, high\]"),
        ("[daemon]\nport_range = [1024]\n", r"\[low, high\]"),
        ("[gateway]\nexpect_timeout = inf\n", "finite"),
        ("[gateway]\nexpect_timeout = nan\n", "finite"),
        ("[gateway]\nexpect_timeout = 0\n", "positive"),
        ("[gateway]\nhold_timeout = -0.5\n", "positive"),
        ("[gateway]\nidle_timeout = 1e12\n", "out of range"),
        ("[gateway]\nlinger = true\n", "number of seconds"),
        ("[daemon]\nport_tries = 1e9\n", "integer"),
        ("[daemon]\nport_tries = 1000000000\n", "out of range"),
        ("[daemon]\nport_tries = 0\n", "out of range"),
        ('[daemon]\nqueue_num = "3"\n', "integer"),
        ("[daemon]\nqueue_num = 70000\n", "out of range"),
        ("[gateway]\nmax_sessions = 0\n", "out of range"),
        ("[gateway]\ncontrol_ports = [21, 65536]\n", "ports 1..65535"),
        ("[gateway]\ncontrol_ports = [true]\n", "ports 1..65535"),
        ('[gateway]\ncontrol_ports = "21"\n', "ports 1..65535"),
        ('[gateway]\nannounce = { "1.2.3.4" = "nowhere" }\n', "addresses"),
        ('[gateway]\nannounce = { "1.2.3.4" = "2001:db8::1" }\n', "one family"),
        ('[daemon]\nstatus_socket = ""\n', "non-empty"),
        ("[daemon]\npassive_mark = 0x02000000\n", "two connmark bits"),
        ("[daemon]\npassive_mark = 0x0E000000\n", "two connmark bits"),
        ("[daemon]\npassive_mark = 0x03000000\n", "watch_mark does not use"),
        ("[daemon]\nwatch_mark = 0x04000000\n", "watch_mark does not use"),
    ],
)
def test_bad_values_get_a_clear_error(tmp_path: Path, text: str, why: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=why):
        load(str(cfg), {})


@pytest.mark.parametrize("text", ["gateway = 5\n", 'daemon = "x"\n', "gateway = [1]\n"])
def test_a_section_that_is_not_a_table_is_refused(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match="must be a table"):
        load(str(cfg), {})


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[gatewy]\nallow_fxp = true\n")
    with pytest.raises(SettingsError, match=r"unknown setting.*gatewy"):
        load(str(cfg), {})


def test_queue_range_beyond_65535_is_refused() -> None:
    with pytest.raises(SettingsError, match="exceed"):
        load(None, {"queue_num": 65535, "queue_count": 2})


def test_command_line_values_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="expect_timeout"):
        load(None, {"expect_timeout": float("inf")})


def test_boundaries_are_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text(
        "[gateway]\ncontrol_ports = [1, 65535]\nexpect_timeout = 1\nmin_data_port = 0\n"
        "[daemon]\nport_range = [2000, 2000]\nport_tries = 1024\nqueue_num = 65535\n"
    )
    s = load(str(cfg), {})
    assert (s.port_range, s.port_tries, s.queue_num) == ((2000, 2000), 1024, 65535)
    assert s.core.expect_timeout == 1 and s.core.control_ports == frozenset({1, 65535})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--expect-timeout", "inf"], "expect_timeout = inf is not valid: must be finite"),
        (["--queue-num", "70000"], "queue_num = 70000 is not valid: is out of range"),
    ],
)
def test_cli_prints_the_error_without_traceback_and_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from alg.daemon.command import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["run", *argv])
    assert run(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
