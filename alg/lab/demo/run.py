"""`ftp-alg lab demo`: FTP through NAT failing without a gateway, then working with one.

Written for a network engineer watching: each step says in plain words what is tried, quotes
the commands and the servers' real replies, and says what went wrong or right. The gateway for
the working half is a parameter ("kernel" today, "ftp-alg" once the daemon exists). The exit
status is 0 only if every failure reproduced and every repair worked, so the demo doubles as a
smoke test.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alg.lab import backend, state
from alg.lab.demo import clients
from alg.lab.demo.clients import Mode, Outcome
from alg.lab.demo.scenarios import Case
from alg.lab.topology import Topology, load

Say = Callable[[str], None]

_STEPS = (
    Case("client-side", "vsftpd", 4, Mode.PORT),
    Case("client-side", "pyftpdlib", 4, Mode.EPRT),
    Case("server-side", "vsftpd", 4, Mode.PASV, trust_pasv=True),
    Case("server-side", "pyftpdlib", 4, Mode.PASV),
    Case("server-side", "vsftpd", 6, Mode.EPSV),
)


def _intro(topo: Topology, case: Case) -> str:
    public, inside = topo.public, topo.inside
    client, outside = topo.address(topo.client), topo.address(topo.outside_server)
    fam = "ipv4" if case.family == 4 else "ipv6"
    verb = {Mode.PORT: "PORT", Mode.EPRT: "EPRT", Mode.PASV: "PASV", Mode.EPSV: "EPSV"}[case.mode]
    if case.side == "client-side":
        return (
            f"The client ({getattr(client, fam)}, behind the router) fetches 1mib.bin from "
            f"{case.server} on the outside server ({getattr(outside, fam)}) in active mode "
            f"({verb}). The router masquerades it as {getattr(public, fam)}."
        )
    trust = (
        "and trusts the address in the 227 reply" if case.trust_pasv else "with default settings"
    )
    return (
        f"An outside client ({getattr(outside, fam)}) fetches 1mib.bin from {case.server} "
        f"through the router's port forward ({getattr(public, fam)} -> inside server "
        f"{getattr(inside, fam)}) in passive mode ({verb}), {trust}."
    )


def _why(topo: Topology, case: Case) -> str:
    if case.side == "client-side":
        return (
            "The server saw the control connection come from the router's public address but "
            "was told to connect to a private one: it refuses that foreign address (and has "
            "no route to it)."
        )
    if case.trust_pasv:
        return "The reply carries the inside server's private address: no route from outside."
    ports = ", ".join(str(p) for p in topo.nat["forward_ports"])
    first = (
        "The 229 reply names only a port, which the client tries on the public address"
        if case.mode is Mode.EPSV
        else "The client ignored the private address and used the public one"
    )
    return f"{first}, but the router forwards only ports {ports}, not the data port."


def _quote(outcome: Outcome, say: Say) -> None:
    """The lines that tell the story: data-connection commands, replies, connect failures."""
    keep = ("PORT", "EPRT", "PASV", "EPSV", "RETR")
    show_reply = False
    for line in outcome.transcript:
        if line.startswith("> "):
            show_reply = line[2:6].upper() in keep
            if show_reply:
                say(f"      client sent:  {line[2:]}")
        elif line.startswith("< ") and show_reply:
            say(f"      server said:  {line[2:]}")
        elif line.startswith("* ") and any(
            k in line for k in ("unreachable", "refused", "Skip", "failed:", "timed out")
        ):
            say(f"      client notes: {line[2:]}")


@dataclass
class _Demo:
    prefix: str
    topo: Topology
    workdir: Path
    say: Say

    def arrived(self, outcome: Outcome, case: Case) -> bool:
        """True if the transfer really arrived whole, in the mode asked for."""
        if not outcome.ok or not outcome.stayed() or outcome.sha256 is None:
            return False
        root = state.node_dir(self.prefix, case.server_node(self.topo)) / "ftp"
        return (root / "1mib.bin.sha256").read_text().split()[0] == outcome.sha256

    def server_saw(self, case: Case) -> str | None:
        """What vsftpd logged receiving for an active-mode command: with a gateway, the
        rewritten PORT/EPRT, which the client's own transcript cannot show."""
        if case.server != "vsftpd" or not case.mode.active:
            return None
        log = state.node_dir(self.prefix, case.server_node(self.topo)) / "logs/vsftpd-protocol.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            m = re.search(r'FTP command: Client "([^"]*)", "(.*)"$', line)
            if m and m[2].startswith(str(case.mode)):
                return f"{m[2]}  (from {m[1]}, vsftpd's log)"
        return None

    def gateway_log(self) -> Path:
        return state.node_dir(self.prefix, self.topo.router) / "logs" / "ftp-alg.log"

    def gateway_said(self, since: int) -> list[str]:
        """What ftp-alg logged about the step: its rewrites, forwards and refusals."""
        try:
            text = self.gateway_log().read_text(errors="replace")[since:]
        except OSError:
            return []
        kinds = (" rewrite:", " forward:", " refusal ")
        return [
            line.split(" ftp-alg ", 1)[-1]
            for line in text.splitlines()
            if any(k in line for k in kinds)
        ]

    def step(self, case: Case, expect_ok: bool) -> bool:
        self.say(f"  - {_intro(self.topo, case)}")
        ns = backend.namespace(self.prefix, case.from_node(self.topo))
        log = self.gateway_log()
        since = log.stat().st_size if log.exists() else 0
        outcome = clients.run("curl", ns, case.request(self.topo, timeout=5), self.workdir)
        _quote(outcome, self.say)
        seen = self.server_saw(case)
        if seen:
            self.say(f"      server got:   {seen}")
        for line in self.gateway_said(since):
            self.say(f"      ftp-alg:      {line}")
        ok = self.arrived(outcome, case)
        if ok:
            self.say("    WORKS: 1 MiB arrived, sha256 matches the server's copy.")
        else:
            self.say(
                f"    FAILS: curl exit status {outcome.status}, no file. {_why(self.topo, case)}"
            )
        if ok != expect_ok:
            self.say("    (unexpected: the lab did not behave as described)")
        return ok == expect_ok


def run(prefix: str, working_gateway: str = "ftp-alg", keep: bool = False, say: Say = print) -> int:
    topo = load()
    started = not backend.is_up(prefix, topo)
    if started:
        say(f"Building lab '{prefix}' (namespaces {prefix}-client, -router, -server, -inside)...")
        backend.up(prefix, "none", log=lambda _: None)
    previous = state.gateway_mode(prefix, topo.router) or "none"
    good = True
    try:
        with tempfile.TemporaryDirectory(prefix="ftp-alg-demo-") as tmp:
            demo = _Demo(prefix, topo, Path(tmp), say)
            for mode, expect_ok in (("none", False), (working_gateway, True)):
                backend.set_gateway(prefix, mode, log=lambda _: None)
                title = "no gateway, plain NAT" if mode == "none" else f"gateway: {mode}"
                say(f"\n=== Router with {title} ===")
                for case in _STEPS:
                    good = demo.step(case, expect_ok) and good
    except backend.LabError as exc:
        say(f"\nThe demo stopped: {exc}")
        good = False
    finally:
        if started and not keep:
            backend.down(prefix, log=lambda _: None)
        elif backend.is_up(prefix, topo):
            backend.set_gateway(prefix, previous, log=lambda _: None)
    say("\nEvery failure reproduced and every repair worked." if good else "\nSee above.")
    return 0 if good else 1
