"""The wheel: built without deprecation warnings (SPDX `license`), with the bench's capture.

pyproject.toml once used the `license = { text = ... }` table, which setuptools >= 77 warns
about on every build; the wheel must also carry alg/data so that an installed `ftp-alg bench`
finds its default capture, and the licences of what it ships.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(wheel, the build's full output), built from a copy of the tree so it stays clean."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", "tests"
        ),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "out"), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    (wheel,) = (tmp / "out").glob("ftp_alg-*.whl")
    return wheel, output


def test_build_warns_about_nothing(built: tuple[Path, str]) -> None:
    _, output = built
    assert "Building wheel for ftp-alg" in output  # the backend's output is in there
    assert not re.search(r"deprecat|\w+Warning\b", output, re.I), output[-3000:]


def test_metadata_declares_the_licenses_by_spdx_expression(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
        assert meta["License-Expression"] == "MIT AND BSD-3-Clause"
        assert meta.get("License") is None
        files = meta.get_all("License-File") or []
        assert sorted(files) == ["LICENSE", "alg/data/zeek/LICENSE"]
        for name in files:
            assert f"{meta_name.rsplit('/', 1)[0]}/licenses/{name}" in z.namelist()


def test_wheel_ships_the_bench_capture_with_its_license(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        for name in ("alg/data/zeek/cwd-navigation.pcap.gz", "alg/data/zeek/LICENSE"):
            assert z.read(name) == (ROOT / name).read_bytes()
