"""Real servers that step outside the matrix (issue 13, parts 1 and 3), on every gateway.

A. RFC 959's default data port: a client that sends no PORT/PASV before RETR expects the
   server to connect to its control connection's port. inetutils-ftpd honours that (run
   unpacked, through socat as its inetd: it conflicts with vsftpd as a Debian package);
   vsftpd refuses. Behind masquerade that port is the router's, so only ftp-alg's
   expectation carries the data connection.
B. A server behind the port forward that announces the public address itself (vsftpd
   `pasv_address`): its 227 names the router's address, which ftp-alg now forwards as the
   announcer's own, unchanged.

Both servers take control port 2121 (a router control port) from the lab's pyftpdlib for
this module, which gets it back afterwards.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import pwd
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alg.lab import backend, netns, state
from tests.lab.conftest import LabHandle
from tests.lab.test_ftp_alg import ONE_MIB, OUTSIDE, router, status

pytestmark = pytest.mark.netns

PUBLIC, CLIENT, INSIDE = "198.51.100.1", "192.168.77.10", "192.168.78.20"
PORT = 2121  # one of the router's control ports: the gateways look only there
PASV = (30100, 30109)  # beside the lab's vsftpd (30000-30049) and pyftpdlib (30050-30099)
GATEWAYS = ["ftp-alg", "none", "kernel"]
# .ci/install puts the .deb here (downloaded, not installed: it conflicts with vsftpd)
DEB_CACHE = Path(os.environ.get("FTP_ALG_DEB_CACHE", "/var/cache/ftp-alg-lab/debs"))


@dataclass
class Served:
    """A server started by this module in place of a node's pyftpdlib."""

    proc: subprocess.Popen[bytes]
    sha256: str
    log: Path


def _wait_listen(ns: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Bounded: 10 s, or until the server has died (its log then says why)."""
    for _ in range(100):
        with netns.enter(ns), socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} in {ns}: {log.read_text()[-2000:]}")


def _stop_pyftpdlib(lab: LabHandle, node: str) -> None:
    """Stop the lab's pyftpdlib of `node` through its pid file (the lab started it)."""
    pidfile = state.node_dir(lab.prefix, node) / "pids" / "pyftpdlib.pid"
    pid, start = pidfile.read_text().split()[:2]
    if state.starttime(int(pid)) == start:
        os.kill(int(pid), 15)
        for _ in range(50):
            if not state.alive(int(pid)):
                break
            time.sleep(0.1)
    pidfile.unlink()


def _swap(lab: LabHandle, node: str, shell: str, log: Path) -> subprocess.Popen[bytes]:
    _stop_pyftpdlib(lab, node)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(node), "sh", "-c", shell],
            stdin=out,  # vsftpd writes start-up errors to fd 0
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait_listen(lab.ns(node), PORT, proc, log)
    return proc


def _restore(lab: LabHandle, node: str, proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    record, topo = backend.lab_record(lab.prefix)
    backend.provision(record, topo, node, ["up"])  # idempotent: restarts pyftpdlib alone


def _inetutils_ftpd(tmp: Path) -> Path:
    debs = sorted(DEB_CACHE.glob("inetutils-ftpd_*.deb"))
    if not debs:
        DEB_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "inetutils-ftpd"], cwd=DEB_CACHE, check=False)
        debs = sorted(DEB_CACHE.glob("inetutils-ftpd_*.deb"))
    if not debs:
        pytest.skip(f"no inetutils-ftpd .deb in {DEB_CACHE} (run .ci/install)")
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(tmp / "deb")], check=True)
    return tmp / "deb" / "usr" / "sbin" / "ftpd"


@pytest.fixture(scope="module")
def inetutils(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """inetutils-ftpd on the outside server's port 2121, socat as its inetd. Anonymous
    sessions chroot to the `ftp` user's home: a directory of ours is bind-mounted over it in
    the server's own mount namespace (`ip netns exec` makes one), the host's stays as it is."""
    tmp = tmp_path_factory.mktemp("inetutils")
    ftpd = _inetutils_ftpd(tmp)
    home = pwd.getpwnam("ftp").pw_dir
    root = tmp / "ftp"
    root.mkdir(mode=0o755)
    data = os.urandom(300_000)
    (root / "f.bin").write_bytes(data)
    os.chmod(tmp, 0o755)
    (root / "f.bin").chmod(0o644)
    shell = (
        f"mount --bind {root} {home} && exec socat TCP-LISTEN:{PORT},reuseaddr,fork "
        f"EXEC:{ftpd},nofork"  # nofork: ftpd gets the TCP socket itself, as from inetd
    )
    proc = _swap(lab, "server", shell, tmp / "socat.log")
    yield Served(proc, hashlib.sha256(data).hexdigest(), tmp / "socat.log")
    _restore(lab, "server", proc)
    lab.use_gateway("none")


@dataclass
class NoPort:
    """What a client that sends no PORT/PASV saw: the replies, and the data if it came."""

    replies: list[str]
    lport: int
    peer: tuple[str, int] | None = None
    sha256: str | None = None


def retr_default_port(ns: str, port: int, name: str, wait: float = 8) -> NoPort:
    """Log in, TYPE I, RETR with no PORT or PASV, listening on the control connection's own
    local port (SO_REUSEADDR/SO_REUSEPORT on both sockets) for the server's connection, at
    most `wait` seconds."""
    with netns.enter(ns):
        ctl, lst = socket.socket(), socket.socket()
    with ctl, lst:
        for s in (ctl, lst):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ctl.bind(("0.0.0.0", 0))
        lport = ctl.getsockname()[1]
        lst.bind(("0.0.0.0", lport))
        lst.listen(1)
        lst.settimeout(wait)
        ctl.settimeout(10)
        ctl.connect((OUTSIDE, port))
        lines = ctl.makefile("rb")
        out = NoPort([], lport)

        def reply() -> str:
            while True:
                line = lines.readline().decode("latin-1").rstrip("\r\n")
                out.replies.append(line)
                if not line or (line[:3].isdigit() and line[3:4] == " "):
                    return line

        def cmd(text: str) -> str:
            ctl.sendall(text.encode() + b"\r\n")
            return reply()

        reply()
        for text in ("USER anonymous", "PASS lab@", "TYPE I"):
            cmd(text)
        if cmd(f"RETR {name}").startswith("1"):
            try:
                data, peer = lst.accept()
            except TimeoutError:
                return out  # the server waits for a data connection of its own making
            digest = hashlib.sha256()
            with data:
                while chunk := data.recv(65536):
                    digest.update(chunk)
            out.peer, out.sha256 = peer, digest.hexdigest()
            reply()
        cmd("QUIT")
        return out


def _log_lines(lab: LabHandle) -> list[str]:
    path = state.node_dir(lab.prefix, "router") / "logs" / "ftp-alg.log"
    return path.read_text(errors="replace").splitlines()


def test_pyftpdlib_waits_for_port_or_pasv(lab: LabHandle) -> None:
    """Before the module's servers replace it: pyftpdlib accepts the RETR and then waits for a
    PORT or PASV, never connecting to the default port (plain NAT: nothing in the way)."""
    lab.use_gateway("none")
    assert (state.node_dir(lab.prefix, "server") / "pids" / "pyftpdlib.pid").exists()
    got = retr_default_port(lab.ns("client"), PORT, ONE_MIB, wait=3)
    assert got.replies[0] == "220 pyftpdlib lab server ready."
    assert got.replies[4:] == ["150 File status okay. About to open data connection."], got
    assert got.peer is None


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_default_data_port_with_inetutils_ftpd(
    lab: LabHandle, inetutils: Served, gateway: str
) -> None:
    lab.use_gateway(gateway)
    seen = len(_log_lines(lab)) if gateway == "ftp-alg" else 0
    got = retr_default_port(lab.ns("client"), PORT, "f.bin")
    assert got.replies[0] == "220 localhost FTP server (GNU inetutils 2.4) ready.", got
    assert got.replies[3] == "200 Type set to I.", got
    if gateway != "ftp-alg":
        # nothing expects the router's port: the router answers the server's SYN with a RST
        assert got.replies[4:] == [
            "425 Can't build data connection: Connection refused.",
            "221 Goodbye.",
        ], got
        return
    assert got.replies[4].startswith("150 Opening BINARY mode data connection for 'f.bin'")
    assert got.replies[5] == "226 Transfer complete.", got
    assert got.sha256 == inetutils.sha256
    assert got.peer is not None and got.peer[0] == OUTSIDE  # DNATed to our control port
    new = _log_lines(lab)[seen:]
    forward = [x for x in new if "forward: default data port" in x]
    assert len(forward) == 1, new
    assert re.search(rf"-> {PUBLIC}:\d+, sent on to {CLIENT}:{got.lport} ", forward[0])
    counters = status(lab)["counters"]
    assert isinstance(counters, dict)
    assert counters.get("forward") == 1 and "refusal" not in counters, counters


def test_tnftp_sendport_off_cannot_bind_its_control_port(
    lab: LabHandle, inetutils: Served, tmp_path: Path
) -> None:
    """tnftp's `sendport` off is meant for the default port, but its control socket has no
    SO_REUSEADDR: on Linux it fails to listen there and never sends the RETR."""
    lab.use_gateway("ftp-alg")
    script = "user anonymous lab@\npassive off\nsendport\nbinary\nget f.bin\nquit\n"
    done = subprocess.run(
        ["ip", "netns", "exec", lab.ns("client"), "tnftp", "-n", "-v", OUTSIDE, str(PORT)],
        input=script, capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert "Use of PORT/LPRT cmds off." in said, said
    assert "Can't bind for data connection: Address already in use" in said, said
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_vsftpd_wants_port_or_pasv_first(lab: LabHandle, gateway: str) -> None:
    lab.use_gateway(gateway)
    got = retr_default_port(lab.ns("client"), 21, ONE_MIB)
    assert got.replies[0] == "220 (vsFTPd 3.0.3)"
    assert got.replies[4] == "425 Use PORT or PASV first.", got
    assert got.sha256 is None


@pytest.fixture(scope="module")
def announcer(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """vsftpd on the inside server's port 2121 (forwarded from the public address), saying
    the public address in its 227 (`pasv_address`)."""
    tmp = tmp_path_factory.mktemp("announcer")
    node = state.node_dir(lab.prefix, "inside")
    conf = tmp / "vsftpd.conf"
    conf.write_text(
        f"listen=YES\nlisten_port={PORT}\nbackground=NO\nseccomp_sandbox=NO\n"
        "anonymous_enable=YES\nno_anon_password=YES\nlocal_enable=NO\n"
        f"anon_root={node / 'ftp'}\nsecure_chroot_dir={node / 'empty'}\n"
        f"pasv_enable=YES\npasv_address={PUBLIC}\npasv_addr_resolve=NO\n"
        f"pasv_min_port={PASV[0]}\npasv_max_port={PASV[1]}\ndirmessage_enable=NO\n"
    )
    proc = _swap(lab, "inside", f"exec vsftpd {conf}", tmp / "vsftpd.log")
    sha = (node / "ftp" / f"{ONE_MIB}.sha256").read_text().split()[0]
    yield Served(proc, sha, tmp / "vsftpd.log")
    _restore(lab, "inside", proc)
    lab.use_gateway("none")


class _Recording(ftplib.FTP):
    """ftplib that keeps every reply, so the test can read the 227 its transfer used, and
    trusts the 227's address (by default ftplib connects to the control peer instead)."""

    trust_server_pasv_ipv4_address = True

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[str] = []

    def sendcmd(self, cmd: str) -> str:
        reply = super().sendcmd(cmd)
        self.replies.append(reply)
        return reply


def pasv_retr(lab: LabHandle) -> tuple[str, str]:
    """(227 reply, sha256 or the connect error) for an outside client that trusts the 227."""
    ftp = _Recording()
    with netns.enter(lab.ns("server")):
        ftp.connect(PUBLIC, PORT, timeout=5)
    try:
        ftp.login()
        digest = hashlib.sha256()
        try:
            with netns.enter(lab.ns("server")):
                ftp.retrbinary(f"RETR {ONE_MIB}", digest.update)
            got = digest.hexdigest()
        except OSError as exc:
            got = type(exc).__name__
        return next(r for r in ftp.replies if r.startswith("227")), got
    finally:
        ftp.close()


def _static_forward(lab: LabHandle, op: str) -> None:
    router(lab, "iptables", "-w", "-t", "nat", op, "PREROUTING", "-d", PUBLIC, "-p", "tcp",
           "--dport", f"{PASV[0]}:{PASV[1]}", "-j", "DNAT", "--to-destination", INSIDE)  # fmt: skip


@pytest.mark.parametrize(
    ("gateway", "static"),
    [(g, False) for g in GATEWAYS] + [("none", True), ("kernel", True)],
    ids=["ftp-alg", "none", "kernel", "none-static-range", "kernel-static-range"],
)
def test_server_announcing_the_public_address(
    lab: LabHandle, announcer: Served, gateway: str, static: bool
) -> None:
    lab.use_gateway(gateway)
    seen = len(_log_lines(lab)) if gateway == "ftp-alg" else 0
    if static:
        _static_forward(lab, "-I")
    try:
        pasv, got = pasv_retr(lab)
    finally:
        if static:
            _static_forward(lab, "-D")
    assert pasv.startswith("227 Entering Passive Mode (198,51,100,1,"), pasv
    if gateway == "ftp-alg" or static:
        assert got == announcer.sha256
    else:
        # the kernel helper expects only the address the server really has (loose=0);
        # nothing forwards the passive port: the router refuses the connection
        assert got == "ConnectionRefusedError"
    if gateway == "ftp-alg":
        new = [x for x in _log_lines(lab)[seen:] if " session " in x]
        assert any("forward: 227 port" in x and "text unchanged" in x for x in new), new
        assert not any("refusal" in x for x in new), new
        counters = status(lab)["counters"]
        assert isinstance(counters, dict)
        assert counters.get("forward") == 1 and "refusal" not in counters, counters


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_client_announcing_the_public_address(lab: LabHandle, gateway: str, tmp_path: Path) -> None:
    """The other direction: a client behind the router that names the router's address in
    its PORT (curl `--ftp-port`), to the outside vsftpd."""
    lab.use_gateway(gateway)
    seen = len(_log_lines(lab)) if gateway == "ftp-alg" else 0
    out = tmp_path / "got.bin"
    done = subprocess.run(
        ["ip", "netns", "exec", lab.ns("client"), "curl", "-sS", "-v", "--disable-eprt",
         "--ftp-port", PUBLIC, "--max-time", "20", f"ftp://{OUTSIDE}/{ONE_MIB}", "-o", str(out)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    said = [x[2:] for x in done.stderr.splitlines() if x.startswith(("> PORT", "< 150", "< 425"))]
    assert said[0].startswith(f"PORT {PUBLIC.replace('.', ',')},"), done.stderr
    if gateway != "ftp-alg":  # nothing expects the router's port: vsftpd's connect is refused
        assert said[1:] == ["425 Failed to establish connection."], done.stderr
        return
    assert said[1].startswith("150 Opening BINARY mode data connection"), done.stderr
    want = (state.node_dir(lab.prefix, "server") / "ftp" / f"{ONE_MIB}.sha256").read_text()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want.split()[0]
    new = [x for x in _log_lines(lab)[seen:] if " session " in x]
    assert any("forward: PORT port" in x and "text unchanged" in x for x in new), new
    assert not any("refusal" in x for x in new), new
