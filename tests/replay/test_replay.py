"""Replay of every shared capture and of the synthetic ones, against golden reports.

The golden files in tests/golden/replay/ are the reports as reviewed; set UPDATE_GOLDEN=1 to
rewrite them after a deliberate change (and read the diff). Each output capture is also read
back by tshark: valid checksums, and no TCP analysis complaint that the input did not have.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from alg.replay.command import _nat, replay
from alg.replay.report import as_dict
from tests.replay import synthetic


def capture_dir() -> Path:
    """tests/captures: the recorded captures, one folder per source with its LICENSE."""
    return Path(__file__).resolve().parents[1] / "captures"


SHARED = capture_dir()
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "replay"
MODES = {
    "client-nat": ({4: "203.0.113.7", 6: "2001:db8::7"}, {}),
    "server-nat": ({}, {4: "203.0.113.9", 6: "2001:db8::9"}),
}
SHARED_CAPTURES = sorted(p.relative_to(SHARED).as_posix() for p in SHARED.glob("*/*.pcap*"))


def _addrs(m: dict[int, str]) -> dict[int, bytes]:
    return _nat(list(m.values()))


def _analysis(path: Path) -> collections.Counter[str]:
    """Wireshark's complaints about a capture: bad checksums and TCP analysis flags."""
    done = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.relative_sequence_numbers:TRUE",
            "-Y",
            "tcp.port in {21} && (tcp.analysis.flags || tcp.checksum.status == 0 || "
            "ip.checksum.status == 0)",
            "-T",
            "fields",
            "-e",
            "tcp.checksum.status",
            "-e",
            "_ws.expert.message",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out: collections.Counter[str] = collections.Counter()
    for row in done.stdout.splitlines():
        status, _, messages = row.partition("\t")
        if status == "0":
            out["bad checksum"] += 1
        for msg in messages.split(","):
            if msg and "window" not in msg.lower():
                out[msg.split("(")[0].strip()] += 1
    return out


def check(name: str, capture: Path, mode: str, tmp_path: Path) -> dict[str, object]:
    client, server = MODES[mode]
    out = tmp_path / "out.pcap"
    rep = replay(str(capture), _addrs(client), _addrs(server), str(out))
    got = as_dict(rep.report)
    roundtrip = got["roundtrip"]
    assert isinstance(roundtrip, dict) and roundtrip["mismatched"] == 0
    golden = GOLDEN / f"{name.replace('/', '__')}.{mode}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(golden.read_text()), f"report differs from {golden}"
    if shutil.which("tshark") and out.exists():
        before, after = _analysis(capture), _analysis(out)
        assert after["bad checksum"] == 0
        worse = {k: v for k, v in after.items() if v > before.get(k, 0)}
        assert worse == {}, f"TCP analysis complaints the input did not have: {worse}"
    return got


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", SHARED_CAPTURES)
def test_shared_capture(name: str, mode: str, tmp_path: Path) -> None:
    check(name, SHARED / name, mode, tmp_path)


def test_every_shared_capture_is_covered() -> None:
    listed = {
        line.split("|")[1].strip()
        for line in (SHARED / "MANIFEST.md").read_text().splitlines()
        if line.startswith("| ")
    }
    assert set(SHARED_CAPTURES) == listed - {"file"}
    assert len(SHARED_CAPTURES) == 24


@pytest.fixture(scope="module")
def synthetic_captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.make_all(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(synthetic.CAPTURES))
def test_synthetic_capture(
    name: str, mode: str, synthetic_captures: dict[str, Path], tmp_path: Path
) -> None:
    check(f"synthetic/{name}", synthetic_captures[name], mode, tmp_path)


def _kinds(report: dict[str, object]) -> collections.Counter[str]:
    sessions = report["sessions"]
    assert isinstance(sessions, list)
    return collections.Counter(e["kind"] for s in sessions for e in s["events"])


def test_synthetic_reports_show_what_each_capture_is_for(
    synthetic_captures: dict[str, Path], tmp_path: Path
) -> None:
    many = check(
        "synthetic/many-rewrites", synthetic_captures["many-rewrites"], "client-nat", tmp_path
    )
    assert _kinds(many)["rewrite"] == 60
    split = check("synthetic/split-port", synthetic_captures["split-port"], "client-nat", tmp_path)
    assert _kinds(split)["rewrite"] == 2 and split["held"] == 3
    lprt = check("synthetic/lprt-228", synthetic_captures["lprt-228"], "client-nat", tmp_path)
    assert _kinds(lprt)["rewrite"] == 1
    pasv = check(
        "synthetic/pasv-no-parens", synthetic_captures["pasv-no-parens"], "server-nat", tmp_path
    )
    assert _kinds(pasv)["rewrite"] == 2 and _kinds(pasv)["forward"] == 1
