"""The repository is self-contained: the captures the tests and the bench read live in it.

A clone with no ../shared beside it must replay every capture and run `ftp-alg bench` whole, so
the copies are checked against their manifest (size, licence beside them) and no code or test
may name the shared folder outside the repository.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader

from alg.captures import bench_capture
from tests.replay.test_replay import capture_dir

ROOT = Path(__file__).resolve().parents[1]


# A phrase each licence's text carries, by the SPDX name the manifest gives.
LICENSE_TEXT = {
    "BSD-3-Clause": "Redistribution and use in source and binary forms",
    "MIT": "Permission is hereby granted, free of charge",
    "LGPL-3.0": "GNU LESSER GENERAL PUBLIC LICENSE",
}


def _manifest() -> dict[str, tuple[int, int, str]]:
    """file -> (bytes, packets, licence), from the table in tests/captures/MANIFEST.md."""
    rows: dict[str, tuple[int, int, str]] = {}
    for line in (capture_dir() / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[3].isdigit():
            rows[cells[0]] = (int(cells[3]), int(cells[4]), cells[2])
    return rows


def _frames(path: Path) -> int:
    with RawPcapReader(str(path)) as reader:
        return sum(1 for _ in reader)


def test_capture_dir_is_inside_the_repository() -> None:
    assert capture_dir().resolve().is_relative_to(ROOT)


def test_manifest_lists_exactly_the_captures_kept() -> None:
    kept = {p.relative_to(capture_dir()).as_posix() for p in capture_dir().glob("*/*.pcap*")}
    assert set(_manifest()) == kept
    assert len(kept) == 24


@pytest.mark.parametrize("name", sorted(_manifest()))
def test_capture_is_the_unmodified_copy(name: str) -> None:
    size, packets, _ = _manifest()[name]
    path = capture_dir() / name
    assert path.stat().st_size == size
    assert _frames(path) == packets


@pytest.mark.parametrize("name", sorted(_manifest()))
def test_every_capture_has_its_license_beside_it(name: str) -> None:
    license_text = (capture_dir() / name).parent.joinpath("LICENSE").read_text()
    assert LICENSE_TEXT[_manifest()[name][2]] in license_text


def test_bench_capture_ships_in_the_package_with_its_license() -> None:
    path = bench_capture()
    assert path.resolve().is_relative_to(ROOT / "alg")
    assert (path.parent / "LICENSE").read_text() == (capture_dir() / "zeek/LICENSE").read_text()
    original = capture_dir() / "zeek" / "cwd-navigation.pcap"
    assert gzip.decompress(path.read_bytes()) == original.read_bytes()
    assert _frames(path) == 8317


def test_no_code_reads_the_shared_folder_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|[\"'/]shared/pcaps|/ \"shared\"|\"shared\" /")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for top in ("alg", "tests")
        for p in sorted((ROOT / top).rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if outside.search(line) and p != Path(__file__).resolve()
    ]
    assert offenders == []
