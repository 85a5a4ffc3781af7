"""The capture `ftp-alg bench` replays by default. It must work from an installed package,
where tests/ (which keeps the other captures, tests/captures/) is absent, so it ships inside
the package, in alg/data/, with its LICENSE.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def bench_capture() -> Path:
    """zeek's cwd-navigation capture, gzipped: 8317 frames, 688 PASV/227 cycles on one session."""
    return _PACKAGE / "data" / "zeek" / "cwd-navigation.pcap.gz"
