"""`make deb`: what an admin gets from `apt install ./dist/ftp-alg_*.deb` on Debian 12.

The package is checked as built (`dpkg-deb`, lintian), then installed with apt for real, in a
private mount namespace whose /usr, /etc and /var are overlays on a tmpfs: apt, dpkg and the
maintainer scripts run unchanged, and nothing reaches this machine's root.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PYTHON = f"python{sys.version_info[0]}.{sys.version_info[1]}"
UNIT = "lib/systemd/system/ftp-alg.service"
pytestmark = pytest.mark.slow


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _debian_python() -> str:
    out = _run("/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    return f"python{out.strip()}"


def test_file_name_and_control_fields(deb: Path) -> None:
    arch = _run("dpkg", "--print-architecture").strip()
    assert deb.name == f"ftp-alg_{VERSION}_{arch}.deb"
    fields = dict(
        line.split(": ", 1)
        for line in _run("dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture")
        .strip()
        .splitlines()
    )
    assert fields == {"Package": "ftp-alg", "Version": VERSION, "Architecture": arch}
    depends = {d.split()[0] for d in _run("dpkg-deb", "-f", str(deb), "Depends").split(",")}
    assert {_debian_python(), "libnetfilter-queue1", "libc6", "iptables", "conntrack"} <= depends


def test_contents_name_everything_an_admin_needs(deb: Path) -> None:
    listing = _run("dpkg-deb", "-c", str(deb))
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    assert {
        "/etc/ftp-alg/ftp-alg.toml",
        f"/{UNIT}",
        "/usr/sbin/ftp-alg",
        "/usr/lib/ftp-alg/bin/ftp-alg",
        "/usr/share/ftp-alg/rules/ftp-alg.iptables.sh",
        "/usr/share/ftp-alg/rules/ftp-alg.nft",
        "/usr/share/man/man8/ftp-alg.8.gz",
        "/usr/share/doc/ftp-alg/copyright",
        "/usr/share/doc/ftp-alg/changelog.gz",
        "/usr/share/lintian/overrides/ftp-alg",
    } <= paths
    assert "./usr/sbin/ftp-alg -> ../lib/ftp-alg/bin/ftp-alg" in listing
    # Not enabled on install: no symlink in /etc/systemd; nothing in /opt or /usr/local.
    assert not [p for p in paths if p.startswith(("/etc/systemd", "/opt", "/usr/local"))]
    netfilterqueue = [p for p in paths if re.search(r"/netfilterqueue/_impl\..*\.so$", p)]
    assert len(netfilterqueue) == 1, "netfilterqueue is compiled into the package"


def test_config_is_a_conffile_and_the_documented_default(unpacked: Path) -> None:
    assert (unpacked / "DEBIAN/conffiles").read_text() == "/etc/ftp-alg/ftp-alg.toml\n"
    shipped = (unpacked / "etc/ftp-alg/ftp-alg.toml").read_text()
    assert shipped == (ROOT / "docs/ftp-alg.toml").read_text()


def test_rules_are_the_repository_rule_sets(unpacked: Path) -> None:
    for name in ("ftp-alg.iptables.sh", "ftp-alg.nft", "README.md"):
        shipped = unpacked / "usr/share/ftp-alg/rules" / name
        assert shipped.read_bytes() == (ROOT / "rules" / name).read_bytes()


def test_unit_runs_the_installed_program(unpacked: Path) -> None:
    unit = (unpacked / UNIT).read_text()
    execs = re.findall(r"^(Exec\w+)=\+?(\S+) (.*)$", unit, re.M)
    assert execs == [
        ("ExecStartPre", "/usr/sbin/ftp-alg", "rules apply --queue-num 0 --ports 21,2121"),
        ("ExecStart", "/usr/sbin/ftp-alg", "run --config /etc/ftp-alg/ftp-alg.toml"),
        ("ExecStopPost", "/usr/sbin/ftp-alg", "rules remove"),
    ]
    assert "/opt/" not in unit and "Documentation=man:ftp-alg(8)" in unit
    docs = (ROOT / "docs/ftp-alg.service").read_text()
    settings = {line for line in unit.splitlines() if line and not line.startswith(("#", "Exec"))}
    assert settings - {"Documentation=man:ftp-alg(8)"} == {
        line for line in docs.splitlines() if line and not line.startswith(("#", "Exec"))
    }


def test_maintainer_scripts_leave_the_firewall_and_the_unit_alone(unpacked: Path) -> None:
    for name in ("postinst", "prerm", "postrm"):
        text = (unpacked / "DEBIAN" / name).read_text()
        script = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"\benable\b|\bstart\b|iptables|nft |rules apply", script), name
        done = subprocess.run(["sh", "-n", str(unpacked / "DEBIAN" / name)])
        assert done.returncode == 0, name


def _man_files(page: str) -> list[str]:
    """The paths the FILES section of a man page lists (`.TP` then `.I path`)."""
    section = page.split(".SH FILES", 1)[1].split(".SH ", 1)[0]
    return [p.replace("\\-", "-") for p in re.findall(r"^\.TP\n\.I (\S+)$", section, re.M)]


def test_man_page_says_where_everything_is(unpacked: Path) -> None:
    page = gzip.decompress((unpacked / "usr/share/man/man8/ftp-alg.8.gz").read_bytes()).decode()
    listed = _man_files(page)
    assert len(listed) == 6
    for path in listed:
        if not path.startswith("/run/"):
            assert (unpacked / path.lstrip("/")).exists(), f"ftp-alg(8) names {path}"
    if shutil.which("man"):
        done = subprocess.run(
            [
                "man",
                "--warnings",
                "-l",
                "-Tutf8",
                str(unpacked / "usr/share/man/man8/ftp-alg.8.gz"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        text = re.sub(".\x08", "", done.stdout)  # overstrike bold
        assert "systemctl enable --now ftp-alg" in text


def test_lintian_finds_no_error_or_warning(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("needs lintian (bash .ci/install)")
    done = subprocess.run(["lintian", str(deb)], capture_output=True, text=True)
    complaints = [line for line in done.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert complaints == [], done.stdout


def _sandbox(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Runs `script` (sh -e) where /usr, /etc and /var are throw-away overlays of the real ones.

    Upper layers live on a tmpfs in the private mount namespace, which disappears with the
    last process in it. /run/systemd is hidden so that no maintainer script reaches systemd.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (mount namespaces, overlayfs)")
    layers = tmp_path / "layers"
    layers.mkdir()
    setup = [f"mount -t tmpfs tmpfs {layers}"]
    for top in ("usr", "etc", "var"):
        up, work = layers / "up" / top, layers / "work" / top
        setup.append(f"mkdir -p {up} {work}")
        setup.append(
            f"mount -t overlay overlay -o lowerdir=/{top},upperdir={up},workdir={work} /{top}"
        )
    setup.append("if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi")
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            "\n".join([*setup, script]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def _apt_install(deb: Path) -> str:
    return f"apt-get install -y -q --no-install-recommends {deb} >/dev/null"


def test_installed_venv_loads_netfilterqueue_and_the_bench_capture(
    deb: Path, tmp_path: Path
) -> None:
    probe = (
        "import sys, netfilterqueue._impl, pyroute2, scapy; from alg.captures import bench_capture;"
        " print(sys.prefix, netfilterqueue._impl.__file__, bench_capture().stat().st_size)"
    )
    done = _sandbox(
        tmp_path,
        f"{_apt_install(deb)}\n"
        "ls /etc/systemd/system/multi-user.target.wants/\n"
        f"/usr/lib/ftp-alg/bin/python3 -c '{probe}'\n"
        f"systemd-analyze verify /{UNIT}\n"
        "readlink -f /usr/lib/ftp-alg/bin/python3",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "ftp-alg.service" not in lines, "installing must not enable the service"
    prefix, module, size = lines[-2].split()
    assert prefix == "/usr/lib/ftp-alg" and module.startswith(f"/usr/lib/ftp-alg/lib/{PYTHON}")
    assert int(size) > 100_000
    assert lines[-1] == f"/usr/bin/{_debian_python()}"


def test_installed_ftp_alg_help(deb: Path, tmp_path: Path) -> None:
    done = _sandbox(tmp_path, f"{_apt_install(deb)}\nftp-alg --help\nman -w ftp-alg")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rules" in done.stdout and "/usr/share/man/man8/ftp-alg.8.gz" in done.stdout


def test_remove_keeps_only_the_config_and_purge_removes_it(deb: Path, tmp_path: Path) -> None:
    done = _sandbox(
        tmp_path,
        f"{_apt_install(deb)}\n"
        "/usr/lib/ftp-alg/bin/python3 -c 'import alg.cli'\n"
        "dpkg -r ftp-alg >/dev/null\n"
        "ls -A /usr/lib/ftp-alg /usr/sbin/ftp-alg /etc/ftp-alg 2>&1 || true\n"
        "echo purge\n"
        "dpkg -P ftp-alg >/dev/null\n"
        "ls -A /etc/ftp-alg 2>&1 || true",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    removed, purged = done.stdout.split("purge\n")
    # The byte code postinst compiled goes too: nothing of /usr/lib/ftp-alg is left behind.
    assert "cannot access '/usr/lib/ftp-alg'" in removed
    assert "cannot access '/usr/sbin/ftp-alg'" in removed
    assert "ftp-alg.toml" in removed
    assert "cannot access '/etc/ftp-alg'" in purged
