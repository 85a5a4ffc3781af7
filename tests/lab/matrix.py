"""The gateway matrix: every client x case x operation a working gateway must carry.

One cell = one real client (curl, ftplib, lftp, tnftp, wget, busybox) doing one operation
(RETR of the 1 MiB file, STOR into upload/, LIST) in one case (side, server, address family,
PORT/EPRT/PASV/EPSV). `check_cell` takes the gateway mode, so the same matrix runs for the
kernel helper and for ftp-alg alike (WORKING_GATEWAYS lists the modes that must carry it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from alg.lab.demo.clients import CLIENTS, OPS, supports
from alg.lab.demo.scenarios import Case, all_cases, known_gap
from tests.lab.conftest import LabHandle, sha256_file

WORKING_GATEWAYS = ("kernel", "ftp-alg")
_TRUSTING = ("curl", "ftplib", "lftp")  # clients with a switch to use the 227 address


@dataclass(frozen=True)
class Cell:
    client: str
    case: Case
    op: str

    @property
    def id(self) -> str:
        return f"{self.client}-{self.op}-{self.case.id}"


def cells() -> list[Cell]:
    return [
        Cell(client, case, op)
        for case in all_cases()
        for client in CLIENTS
        for op in OPS
        if supports(client, case.mode, case.family, op)
        and (client in _TRUSTING or not case.trust_pasv)
    ]


def check_cell(lab: LabHandle, gateway: str, cell: Cell, tmp_path: Path) -> None:
    """Run the cell through `gateway` and check what really arrived where."""
    gap = known_gap(gateway, cell.case)
    if gap:
        pytest.skip(f"known gap of the {gateway} gateway (test_kernel_quirks.py): {gap}")
    lab.use_gateway(gateway)
    local = None
    if cell.op == "stor":
        # unique name: vsftpd does not let anonymous users overwrite
        local = tmp_path / f"{gateway}-{cell.id}.bin"
        local.write_bytes(os.urandom(1 << 20))
    invalid_before = lab.invalid_control()
    outcome = lab.run(cell.client, cell.case, tmp_path, cell.op, local)
    assert outcome.ok, outcome.show()
    # the gateway kept conntrack's view of the control connection consistent
    assert lab.invalid_control() == invalid_before, outcome.show()
    # the client used the mode the cell names, with no fallback (lftp switches by itself)
    assert set(outcome.data_verbs()) == {cell.case.mode.value}, outcome.show()
    if cell.op == "retr":
        assert outcome.sha256 == lab.served_sha256(cell.case), outcome.show()
    elif cell.op == "stor":
        assert local is not None
        stored = lab.served_root(cell.case) / "upload" / local.name
        assert stored.exists(), outcome.show()
        assert sha256_file(stored) == sha256_file(local)
    else:
        assert outcome.listing is not None
        assert "1mib.bin" in outcome.listing and "upload" in outcome.listing, outcome.listing
