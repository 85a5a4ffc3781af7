"""Where the recorded captures are read from, so that nothing reads outside the repository.

The replay tests read the copies kept in tests/captures/ (one folder per source project, each
with its LICENSE, listed in MANIFEST.md). `ftp-alg bench` must also work from an installed
package, where tests/ is absent: its default capture ships inside the package, in alg/data/.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def capture_dir() -> Path:
    """tests/captures of this checkout (exists only in a source tree, not in an install)."""
    return _PACKAGE.parent / "tests" / "captures"


def bench_capture() -> Path:
    """zeek's cwd-navigation capture, gzipped: 8317 frames, 688 PASV/227 cycles on one session."""
    return _PACKAGE / "data" / "zeek" / "cwd-navigation.pcap.gz"
