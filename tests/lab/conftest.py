"""Fixtures for the lab tests: one lab (prefix `tl`) per session, always torn down.

The tests read what really happened on the wire (the servers' replies, the client's connect
errors, the bytes that arrived), never only an exit status.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alg.lab import backend, netns, state
from alg.lab.demo import clients
from alg.lab.demo.clients import Outcome
from alg.lab.demo.scenarios import Case
from alg.lab.topology import Topology, load

PREFIX = os.environ.get("FTP_ALG_TEST_LAB", "") + "tl"  # a tag lets labs run side by side
_INVALID_TAG = "tests: INVALID control packets"
TOOLS = (
    "ip",
    "iptables",
    "ip6tables",
    "conntrack",
    "vsftpd",
    "curl",
    "lftp",
    "tnftp",
    "wget",
    "busybox",
    "ss",
)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    return f"the lab needs {', '.join(missing)}" if missing else None


@dataclass
class LabHandle:
    prefix: str
    topo: Topology

    def use_gateway(self, mode: str) -> None:
        if state.gateway_mode(self.prefix, self.topo.router) != mode:
            backend.set_gateway(self.prefix, mode, log=lambda _: None)

    def ns(self, node: str) -> str:
        return backend.namespace(self.prefix, node)

    def invalid_control(self) -> int:
        """INVALID packets of FTP control connections (vsftpd's and pyftpdlib's port) that the
        router forwarded, IPv4 and IPv6: a test-owned counting rule in the router's mangle
        FORWARD chain, added on first use and gone with the lab. conntrack -S's global counter
        also counts every other connection through the router (data connections, what is
        left of earlier tests): on a loaded CI host it moved during kernel-helper cells too,
        which a quiet machine never reproduced."""
        ports = f"{self.topo.ftp['vsftpd_port']},{self.topo.ftp['pyftpdlib_port']}"
        rule = ["FORWARD", "-p", "tcp", "-m", "multiport", "--ports", ports]
        rule += ["-m", "conntrack", "--ctstate", "INVALID"]
        rule += ["-m", "comment", "--comment", _INVALID_TAG]
        total, router = 0, self.ns(self.topo.router)
        for tool in ("iptables", "ip6tables"):
            present = netns.run_in(router, tool, "-t", "mangle", "-C", *rule, check=False)
            if present.returncode != 0:
                netns.run_in(router, tool, "-t", "mangle", "-A", *rule)
            saved = netns.run_in(router, f"{tool}-save", "-c", "-t", "mangle").stdout
            counts = [line for line in saved.splitlines() if _INVALID_TAG in line]
            assert len(counts) == 1, saved
            packets = re.match(r"\[(\d+):", counts[0])
            assert packets is not None, counts[0]
            total += int(packets.group(1))
        return total

    def run(
        self,
        client: str,
        case: Case,
        workdir: Path,
        op: str = "retr",
        local: Path | None = None,
        timeout: float = 10,
    ) -> Outcome:
        req = case.request(self.topo, op, local, timeout)
        return clients.run(client, self.ns(case.from_node(self.topo)), req, workdir)

    def served_root(self, case: Case) -> Path:
        return state.node_dir(self.prefix, case.server_node(self.topo)) / "ftp"

    def served_sha256(self, case: Case, name: str = "1mib.bin") -> str:
        return (self.served_root(case) / f"{name}.sha256").read_text().split()[0]


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    # replace: a lab left by an interrupted run of these tests is rebuilt, not reused
    backend.up(PREFIX, "none", replace=True, log=lambda _: None)
    try:
        yield LabHandle(PREFIX, load())
    finally:
        backend.down(PREFIX, log=lambda _: None)
