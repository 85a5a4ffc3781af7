"""What the kernel helper does that a careful gateway should not: measured, so that the matrix
can skip it with a reason, and so that a kernel that changes is noticed here.

nf_nat_ftp prints the address of a rewritten EPRT |2| with %pI6, i.e. fully expanded
("fd00:0198:0051:0100:0000:0000:0000:0001"), where RFC 2428 leaves the form open and RFC 5952
recommends the compressed one. vsftpd parses the address and accepts it; pyftpdlib compares
it as a string with the control connection's peer and answers 501.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from alg.lab import state
from alg.lab.demo.clients import Mode
from alg.lab.demo.scenarios import Case
from tests.lab.conftest import LabHandle

pytestmark = pytest.mark.netns


def expanded(address: str) -> str:
    return ipaddress.IPv6Address(address).exploded


def test_kernel_writes_eprt_ipv6_expanded_and_pyftpdlib_refuses_it(
    lab: LabHandle, tmp_path: Path
) -> None:
    lab.use_gateway("kernel")
    public = expanded(lab.topo.public.ipv6)
    outcome = lab.run("ftplib", Case("client-side", "pyftpdlib", 6, Mode.EPRT), tmp_path, timeout=3)
    assert not outcome.ok
    reply = outcome.reply_to("EPRT") or ""
    assert re.fullmatch(
        rf"501 Rejected data connection to foreign address {re.escape(public)}:\d+\.", reply
    ), outcome.show()


def test_kernel_writes_eprt_ipv6_expanded_and_vsftpd_accepts_it(
    lab: LabHandle, tmp_path: Path
) -> None:
    lab.use_gateway("kernel")
    public = expanded(lab.topo.public.ipv6)
    case = Case("client-side", "vsftpd", 6, Mode.EPRT)
    outcome = lab.run("ftplib", case, tmp_path)
    assert outcome.ok, outcome.show()
    assert outcome.sha256 == lab.served_sha256(case)
    log = state.node_dir(lab.prefix, case.server_node(lab.topo)) / "logs/vsftpd-protocol.log"
    received = re.findall(r'FTP command: Client "[^"]*", "(EPRT [^"]*)"', log.read_text())
    assert received and received[-1].startswith(f"EPRT |2|{public}|"), received[-3:]
