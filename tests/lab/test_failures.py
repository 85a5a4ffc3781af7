"""Without a gateway the lab reproduces both FTP NAT failures, with the real servers' replies.

Client side: the client behind the masquerading router sends its private address in PORT/EPRT;
vsftpd answers "500 Illegal PORT command.", pyftpdlib "501 Rejected data connection to foreign
address". Server side: the inside server behind the port forward answers PASV with its private
address and EPSV with a port nothing forwards; the outside client cannot connect either way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alg.lab.demo.clients import Mode, Outcome
from alg.lab.demo.scenarios import SERVERS, Case
from tests.lab.conftest import LabHandle

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def no_gateway(lab: LabHandle) -> None:
    lab.use_gateway("none")


def sent(outcome: Outcome, verb: str) -> list[str]:
    return [line[2:] for line in outcome.transcript if line.startswith(f"> {verb}")]


def refusal(server: str, verb: str, address: str) -> str:
    """The reply each server gives to a data address other than the control connection's."""
    if server == "vsftpd":
        return re.escape(f"500 Illegal {verb} command.")
    return rf"501 Rejected data connection to foreign address {re.escape(address)}:\d+\."


def assert_failed(outcome: Outcome) -> None:
    assert not outcome.ok, outcome.show()
    assert outcome.sha256 is None


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("client", ["curl", "ftplib"])
def test_client_side_port_is_refused(
    lab: LabHandle, tmp_path: Path, client: str, server: str
) -> None:
    private = lab.topo.address(lab.topo.client).ipv4
    outcome = lab.run(client, Case("client-side", server, 4, Mode.PORT), tmp_path, timeout=5)
    assert_failed(outcome)
    assert sent(outcome, "PORT")[0].startswith(f"PORT {private.replace('.', ',')},")
    assert re.fullmatch(refusal(server, "PORT", private), outcome.reply_to("PORT") or ""), (
        outcome.show()
    )


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(("client", "family"), [("curl", 4), ("curl", 6), ("ftplib", 6)])
def test_client_side_eprt_is_refused(
    lab: LabHandle, tmp_path: Path, client: str, family: int, server: str
) -> None:
    addr = lab.topo.address(lab.topo.client)
    private = addr.ipv4 if family == 4 else addr.ipv6
    case = Case("client-side", server, family, Mode.EPRT)
    outcome = lab.run(client, case, tmp_path, timeout=3)
    assert_failed(outcome)
    assert sent(outcome, "EPRT")[0].startswith(f"EPRT |{1 if family == 4 else 2}|{private}|")
    assert re.fullmatch(refusal(server, "EPRT", private), outcome.reply_to("EPRT") or ""), (
        outcome.show()
    )
    if family == 4 and client == "curl":  # curl falls back to PORT, refused the same way
        assert re.fullmatch(refusal(server, "PORT", private), outcome.reply_to("PORT") or "")


def pasv_port(reply: str, inside: str) -> int:
    """The data port in a 227 that must carry the inside server's private address."""
    m = re.search(rf"\({inside.replace('.', ',')},(\d+),(\d+)\)", reply)
    assert m, f"227 without the private address {inside}: {reply!r}"
    return int(m[1]) * 256 + int(m[2])


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("client", ["curl", "ftplib"])
def test_server_side_pasv_private_address_is_unreachable(
    lab: LabHandle, tmp_path: Path, client: str, server: str
) -> None:
    case = Case("server-side", server, 4, Mode.PASV, trust_pasv=True)
    outcome = lab.run(client, case, tmp_path, timeout=5)
    assert_failed(outcome)
    reply = outcome.reply_to("PASV") or ""
    assert reply.startswith("227 ")
    pasv_port(reply, lab.topo.inside.ipv4)
    assert any("Network is unreachable" in line for line in outcome.transcript), outcome.show()
    if client == "curl":
        assert any(f"Connecting to {lab.topo.inside.ipv4}" in n for n in outcome.notes())


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("client", ["curl", "ftplib"])
def test_server_side_pasv_data_port_is_not_forwarded(
    lab: LabHandle, tmp_path: Path, client: str, server: str
) -> None:
    """With default settings the client ignores the private address and uses the public one,
    but the router forwards only the control ports."""
    outcome = lab.run(client, Case("server-side", server, 4, Mode.PASV), tmp_path, timeout=5)
    assert_failed(outcome)
    port = pasv_port(outcome.reply_to("PASV") or "", lab.topo.inside.ipv4)
    if client == "curl":
        public = lab.topo.public.ipv4
        assert f"Skip {lab.topo.inside.ipv4} for data connection, re-use {public} instead" in (
            outcome.notes()
        )
        assert f"connect to {public} port {port} failed: Connection refused" in outcome.notes()
    else:
        assert outcome.transcript[-1].startswith("* ConnectionRefusedError"), outcome.show()


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(("client", "family"), [("curl", 4), ("curl", 6), ("ftplib", 6)])
def test_server_side_epsv_port_is_not_forwarded(
    lab: LabHandle, tmp_path: Path, client: str, family: int, server: str
) -> None:
    outcome = lab.run(client, Case("server-side", server, family, Mode.EPSV), tmp_path, timeout=5)
    assert_failed(outcome)
    m = re.fullmatch(
        r"229 Entering extended passive mode \(\|\|\|(\d+)\|\)\.?",
        outcome.reply_to("EPSV") or "",
        re.IGNORECASE,
    )
    assert m, outcome.show()
    if client == "curl":
        public = lab.topo.public.ipv4 if family == 4 else lab.topo.public.ipv6
        assert f"connect to {public} port {m[1]} failed: Connection refused" in outcome.notes()
    else:
        assert outcome.transcript[-1].startswith("* ConnectionRefusedError"), outcome.show()


@pytest.mark.parametrize(
    "case",
    [Case("client-side", s, f, m) for s in SERVERS for f, m in ((4, Mode.PASV), (6, Mode.EPSV))]
    + [Case("server-side", s, f, m) for s in SERVERS for f, m in ((4, Mode.PORT), (6, Mode.EPRT))],
    ids=lambda c: c.id,
)
def test_the_other_direction_works_without_gateway(
    lab: LabHandle, tmp_path: Path, case: Case
) -> None:
    """Controls: passive from the client and active to the inside server need no gateway
    (the data connection is opened outward and masqueraded), so the lab is not just broken."""
    outcome = lab.run("curl", case, tmp_path)
    assert outcome.ok, outcome.show()
    assert outcome.sha256 == lab.served_sha256(case)
