"""The Debian package, built once per session by `make deb` into a temporary folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/ftp-alg_<version>_<arch>.deb as `make deb` writes it (about a minute: pip builds)."""
    for tool in ("make", "dpkg-deb", "dpkg-shlibdeps", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (bash .ci/install)")
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["make", "-C", str(ROOT), "deb", f"DIST={dist}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = sorted(dist.glob("*.deb"))
    assert len(built) == 1, built
    return built[0]


@pytest.fixture(scope="session")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files (`dpkg-deb -x`) with its control files in DEBIAN/ (`-e`)."""
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    return root
