"""The daemon's settings: defaults, then the TOML config file, then the command line.

Every option and its default is listed in `docs/deployment.md` and `docs/ftp-alg.toml`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from alg.core import Config

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
    core: Config = field(default_factory=lambda: Config(control_ports=frozenset({21, 2121})))
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
    # Bounded tries at a random outside port when the inside one is taken on the router.
    port_tries: int = 16
    port_range: tuple[int, int] = (1024, 65535)
    # host:port or [v6]:port for Prometheus' /metrics (alg.daemon.metrics); "" = off.
    metrics_listen: str = ""


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


_CORE_KEYS = {f.name for f in fields(Config)}
_DAEMON_KEYS = {f.name for f in fields(Settings)} - {"core"}


def _core_value(name: str, value: Any) -> Any:
    if name == "control_ports":
        return frozenset(int(p) for p in value)
    if name == "announce":
        return {
            ipaddress.ip_address(k).packed: ipaddress.ip_address(v).packed for k, v in value.items()
        }
    return value


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _check(name: str, value: Any, default: Any) -> None:
    """Refuse a value of the wrong type at start-up, not on the first packet."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif isinstance(default, str):
        ok = isinstance(value, str) and (name != "log_level" or value in _LOG_LEVELS)
        if ok and name == "metrics_listen" and value:
            parse_listen(value)
    elif isinstance(default, frozenset | tuple):
        ok = (
            isinstance(value, list | tuple | frozenset)
            and all(isinstance(v, int) and 0 < v < 65536 for v in value)
            and bool(value)
        )
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ValueError(f"setting {name} = {value!r} is not valid (default: {default!r})")


def load(path: str | None, overrides: dict[str, Any]) -> Settings:
    """Settings from the file at `path` (if any), with `overrides` (non-None values) on top."""
    data: dict[str, Any] = {}
    if path is not None:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
    flat: dict[str, Any] = {}
    for section in ("gateway", "daemon"):
        flat.update(data.pop(section, {}))
    flat.update(data)
    flat.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(flat) - _CORE_KEYS - _DAEMON_KEYS
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    defaults = {
        **{f.name: getattr(Config(), f.name) for f in fields(Config)},
        **{f.name: getattr(Settings(), f.name) for f in fields(Settings)},
    }
    for name, value in flat.items():
        _check(name, value, defaults[name])
    core = Config(**{k: _core_value(k, v) for k, v in flat.items() if k in _CORE_KEYS})
    if "control_ports" not in flat:
        core = replace(core, control_ports=Settings().core.control_ports)
    daemon = {k: v for k, v in flat.items() if k in _DAEMON_KEYS and k != "announce"}
    if "port_range" in daemon:
        daemon["port_range"] = tuple(daemon["port_range"])
    settings = Settings(core=core, **daemon)
    if "announce" in flat:
        core = replace(core, announce=_core_value("announce", flat["announce"]))
        settings = replace(settings, core=core, announce=dict(flat["announce"]))
    return settings
