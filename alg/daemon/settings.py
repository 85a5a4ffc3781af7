"""The daemon's settings: defaults, then the TOML config file, then the command line.

Every option and its default is listed in `docs/deployment.md` and `docs/ftp-alg.toml`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from alg.core import Config
from alg.kernel.rules_skip import DEFAULT_PASSIVE_MARK, DEFAULT_WATCH_MARK, passive_mark_error

DEFAULT_STATUS_SOCKET = "/run/ftp-alg/status.sock"
DEFAULT_CONFIG = "/etc/ftp-alg/ftp-alg.toml"
# Set by `ftp-alg lab exec` (and usable by admins): where `status` and `doctor` look by default,
# so that inside a lab node they find the lab's daemon without options.
STATUS_SOCKET_ENV = "FTP_ALG_STATUS_SOCKET"
CONFIG_ENV = "FTP_ALG_CONFIG"


def status_socket_default() -> str:
    return os.environ.get(STATUS_SOCKET_ENV) or DEFAULT_STATUS_SOCKET


def config_default() -> str | None:
    """The config file `doctor` reads: $FTP_ALG_CONFIG, else the packaged path if present."""
    path = os.environ.get(CONFIG_ENV)
    if path is not None:
        return path or None
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None


@dataclass(frozen=True)
class Settings:
    core: Config = field(default_factory=Config)
    queue_num: int = 0
    # Queues queue_num .. queue_num + queue_count - 1, all read by this one process: with
    # `rules apply --queue-balance A:B` the two directions of a connection may hash to different
    # queues (NAT changes the addresses), so one process must serve the whole range.
    queue_count: int = 1
    # On an unexpected error inside the gateway: let the packet pass unchanged (open) or
    # drop it (closed). Either way it is logged and counted.
    fail_closed: bool = False
    status_socket: str = DEFAULT_STATUS_SOCKET
    log_level: str = "info"
    # Outside address announced in rewrites instead of the one conntrack shows (double NAT:
    # the router's WAN address is itself private). Keys and values are address strings.
    announce: dict[str, str] = field(default_factory=dict)
    # After handling packets, keep polling the queue this long before sleeping in select():
    # the next control packet (often the answer, ~100 us later) then needs no wake-up, which
    # on a virtual machine costs 50-150 us. Spends CPU while traffic flows; 0 = off.
    busy_poll_us: int = 0
    # The connmark bits that say the daemon watches a connection (alg/kernel/rules_skip.py):
    # `rules apply` reads the same config for its skip rule. 0: no skip rule, no mark.
    watch_mark: int = DEFAULT_WATCH_MARK
    # The two connmark bits that say a passive command of an unwatched connection without
    # DNAT passed unqueued (alg/kernel/rules_skip.py, the passive rules); 0: those are queued.
    passive_mark: int = DEFAULT_PASSIVE_MARK
    # Bounded tries at a random outside port when the inside one is taken on the router.
    port_tries: int = 16
    port_range: tuple[int, int] = (1024, 65535)
    # host:port or [v6]:port for Prometheus' /metrics (alg.daemon.metrics); "" = off.
    metrics_listen: str = ""
    # FTPS behind NAT (alg/daemon/ftps.py): inside server -> its passive port ranges, opened
    # to a blind session's client only; inside client -> its active ranges, opened to its
    # server only. Keys are normalised address strings; ranges (low, high), inclusive.
    ftps_passive_ports: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    ftps_active_ports: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9477' or '[::1]:9477' -> (address, port): an IP literal, so the daemon
    never waits for name resolution at start-up; port 0 lets the kernel choose (tests)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        family = 6
    else:
        family = 4
    try:
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError
        if ipaddress.ip_address(host).version != family:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"listen address {text!r} must be IPv4:PORT or [IPv6]:PORT, e.g. 127.0.0.1:9477"
        ) from None
    return host, int(port)


# Options of the config file; `replies_unqueued` is no option: it follows watch_mark.
CORE_OPTIONS = frozenset(f.name for f in fields(Config)) - {"replies_unqueued"}
_DAEMON_KEYS = {f.name for f in fields(Settings)} - {"core"}
_LOG_LEVELS = ("debug", "info", "warning", "error")
_SECTIONS = ("gateway", "daemon")

# Inclusive bounds of the numeric settings. A value outside them is a typo or an attack on
# the daemon's own limits (`port_tries = 1e9` spins, `expect_timeout = inf` never expires).
_BOUNDS: dict[str, tuple[float, float]] = {
    "min_data_port": (0, 65535),
    "max_line": (16, 65536),
    "hold_timeout": (0.001, 60),
    "max_held": (1, 4096),
    "expect_timeout": (1, 86400),
    "idle_timeout": (1, 30 * 86400),
    "linger": (0.001, 3600),
    "max_sessions": (1, 16 * 1024 * 1024),
    "max_corrections": (1, 4096),
    "max_pending": (1, 4096),
    "queue_num": (0, 65535),
    "queue_count": (1, 65536),
    "busy_poll_us": (0, 1_000_000),
    "port_tries": (1, 1024),
    "watch_mark": (0, 0xFFFFFFFF),
    "passive_mark": (0, 0xFFFFFFFF),
}


class SettingsError(ValueError):
    """A setting the daemon refuses at start; the CLI prints it without a traceback."""


def _core_value(name: str, value: Any) -> Any:
    if name == "control_ports":
        return frozenset(int(p) for p in value)
    if name == "announce":
        return {
            ipaddress.ip_address(k).packed: ipaddress.ip_address(v).packed for k, v in value.items()
        }
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_port(value: Any) -> bool:
    return _is_int(value) and 0 < value < 65536


def _announce_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        pairs = [(ipaddress.ip_address(k), ipaddress.ip_address(v)) for k, v in value.items()]
    except ValueError:
        return False
    return all(k.version == v.version for k, v in pairs)


_FTPS_KEYS = ("ftps_passive_ports", "ftps_active_ports")


def parse_ranges(value: Any) -> dict[str, tuple[tuple[int, int], ...]]:
    """`{"192.168.78.21" = "30000-30049"}` (or a list of such strings per address) ->
    {normalised address: ((low, high), ...)}. Raises ValueError saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('must be a table of "address" = "low-high" (or a list of them)')
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    for key, spec in value.items():
        try:
            host = str(ipaddress.ip_address(key))
        except ValueError:
            raise ValueError(f"{key!r} is not an IP address") from None
        items = spec if isinstance(spec, list) else [spec]
        ranges: list[tuple[int, int]] = []
        for item in items:
            low, sep, high = item.partition("-") if isinstance(item, str) else ("", "", "")
            if not (sep and low.strip().isdigit() and high.strip().isdigit()):
                raise ValueError(f'{key} = {item!r}: a range is written "low-high"')
            pair = (int(low), int(high))
            if not (all(map(_is_port, pair)) and pair[0] <= pair[1]):
                raise ValueError(f"{key} = {item!r}: need 1 <= low <= high <= 65535")
            ranges.append(pair)
        if not ranges:
            raise ValueError(f"{key} has no range")
        if host in out:
            raise ValueError(f"{key} is listed twice")
        out[host] = tuple(ranges)
    return out


def _problem(name: str, value: Any, default: Any) -> str | None:
    """Why `value` is refused for setting `name` (whose default is `default`), or None."""
    if name in _FTPS_KEYS:
        try:
            parse_ranges(value)
        except ValueError as exc:
            return str(exc)
        return None
    if name == "port_range":
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_port, value))):
            return "must be [low, high], two ports in 1..65535"
        return None if value[0] <= value[1] else "is reversed (low > high)"
    if name == "control_ports":
        ok = isinstance(value, list | tuple | frozenset) and bool(value)
        return None if ok and all(map(_is_port, value)) else "must be a list of ports 1..65535"
    if name == "announce":
        return None if _announce_ok(value) else "must map addresses to addresses of one family"
    if name == "log_level":
        return None if value in _LOG_LEVELS else f"must be one of {', '.join(_LOG_LEVELS)}"
    if name == "metrics_listen":
        if not isinstance(value, str):
            return "must be HOST:PORT (empty: off)"
        try:
            if value:
                parse_listen(value)
        except ValueError as exc:
            return str(exc)
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, str):
        return None if isinstance(value, str) and value else "must be a non-empty string"
    low, high = _BOUNDS.get(name, (0, float("inf")))
    if isinstance(default, float):
        if not (_is_int(value) or isinstance(value, float)):
            return "must be a number of seconds"
        if not math.isfinite(value) or value <= 0:
            return "must be finite and positive"
    elif not _is_int(value):
        return "must be an integer"
    if not low <= value <= high:
        return f"is out of range {low:g}..{high:g}"
    return None


def _check(name: str, value: Any, default: Any) -> None:
    """Refuse a bad value at start-up, not on the first packet, saying what is wrong."""
    why = _problem(name, value, default)
    if why is not None:
        raise SettingsError(f"setting {name} = {value!r} is not valid: {why}")


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in _SECTIONS:
        table = data.pop(section, {})
        if not isinstance(table, dict):
            raise SettingsError(f"[{section}] must be a table of settings, not {table!r}")
        flat.update(table)
    flat.update(data)
    return flat


def load(path: str | None, overrides: dict[str, Any]) -> Settings:
    """Settings from the file at `path` (if any), with `overrides` (non-None values) on top.

    Raises SettingsError (a ValueError) for a bad value, tomllib's error for bad syntax.
    """
    data: dict[str, Any] = {}
    if path is not None:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
    flat = _flatten(data)
    flat.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(flat) - CORE_OPTIONS - _DAEMON_KEYS
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    defaults = {
        **{f.name: getattr(Config(), f.name) for f in fields(Config)},
        **{f.name: getattr(Settings(), f.name) for f in fields(Settings)},
    }
    for name, value in flat.items():
        _check(name, value, defaults[name])
    first, count = flat.get("queue_num", 0), flat.get("queue_count", 1)
    if first + count > 65536:
        raise SettingsError(f"queues {first}..{first + count - 1} exceed queue number 65535")
    watch = flat.get("watch_mark", DEFAULT_WATCH_MARK)
    problem = passive_mark_error(flat.get("passive_mark", DEFAULT_PASSIVE_MARK), watch)
    if problem:
        raise SettingsError(problem)
    core = Config(**{k: _core_value(k, v) for k, v in flat.items() if k in CORE_OPTIONS})
    if "control_ports" not in flat:
        core = replace(core, control_ports=Settings().core.control_ports)
    daemon = {k: v for k, v in flat.items() if k in _DAEMON_KEYS and k != "announce"}
    if "port_range" in daemon:
        daemon["port_range"] = tuple(daemon["port_range"])
    for name in _FTPS_KEYS:
        if name in daemon:
            daemon[name] = parse_ranges(daemon[name])
    settings = Settings(core=core, **daemon)
    if "announce" in flat:
        core = replace(core, announce=_core_value("announce", flat["announce"]))
        settings = replace(settings, core=core, announce=dict(flat["announce"]))
    return settings
