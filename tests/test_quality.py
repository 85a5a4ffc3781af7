"""The package stays `mypy --strict` and `ruff` clean: part of the suite, so CI enforces it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is a test dependency (pip install -e '.[test]')"
    return found


def test_mypy_strict() -> None:
    done = subprocess.run(
        [_tool("mypy"), "--strict", "alg", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_over_400_lines() -> None:
    """Long modules hide more than one job (issue: the core as a readable protocol machine)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "alg").rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, f"split these modules: {long}"


def test_ruff_format() -> None:
    done = subprocess.run(
        [_tool("ruff"), "format", "--check", "alg", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    done = subprocess.run(
        [_tool("ruff"), "check", "alg", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
