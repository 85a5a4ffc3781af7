"""With a gateway on the router, everything the lab breaks without one works: RETR (sha256 of
the 1 MiB file), STOR into upload/ (sha256 of the stored copy) and LIST, for every client and
case in tests/lab/matrix.py, both directions, IPv4 and IPv6."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.conftest import LabHandle
from tests.lab.matrix import WORKING_GATEWAYS, Cell, cells, check_cell

pytestmark = pytest.mark.netns

_PARAMS = [pytest.param(g, c, id=f"{g}-{c.id}") for g in WORKING_GATEWAYS for c in cells()]


@pytest.mark.parametrize(("gateway", "cell"), _PARAMS)
def test_gateway_carries(lab: LabHandle, tmp_path: Path, gateway: str, cell: Cell) -> None:
    check_cell(lab, gateway, cell, tmp_path)
