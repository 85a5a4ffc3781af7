"""Run a command under the unit's system call filter and MemoryDenyWriteExecute, without systemd.

The lab has no systemd as PID 1, so `systemd-run -p SystemCallFilter=...` is not available.
This wrapper rebuilds the same allow-list from `systemd-analyze syscall-filter` (the groups
of docs/ftp-alg.service: @system-service minus @privileged and @resources, others failing
with EPERM), loads it with libseccomp, sets the kernel's PR_SET_MDWE (refuse memory that is
both writable and executable, as MemoryDenyWriteExecute= does) and execs the command. Run it
with the interpreter that has the `seccomp` module (Debian python3-seccomp: /usr/bin/python3).

    /usr/bin/python3 tests/kernel/sandbox.py CONFIG_FILE -- COMMAND...
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import subprocess
import sys

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def unit_filter(unit: str) -> tuple[list[str], list[str]]:
    """(allowed groups, denied groups) of the SystemCallFilter= lines in `unit`."""
    allow: list[str] = []
    deny: list[str] = []
    with open(unit) as f:
        for line in f:
            if line.startswith("SystemCallFilter="):
                value = line.split("=", 1)[1].strip()
                (deny if value.startswith("~") else allow).extend(value.lstrip("~").split())
    return allow, deny


def syscall_groups() -> dict[str, list[str]]:
    """Every group systemd knows, with its members (syscalls or other groups)."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if re.match(r"^@\S+$", line):
            current = line
            groups[current] = []
        elif current and re.match(r"^ {4}[@a-z0-9_]\S*$", line):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def main() -> int:
    import seccomp  # type: ignore[import-not-found]

    unit, sep, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    if sep != "--" or not command:
        raise SystemExit(__doc__)
    groups = syscall_groups()
    allow_groups, deny_groups = unit_filter(unit)
    allowed = expand(allow_groups, groups) - expand(deny_groups, groups)
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in sorted(allowed):
        with contextlib.suppress(RuntimeError, ValueError, OSError):  # unknown on this arch
            filt.add_rule(seccomp.ALLOW, name)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
    filt.load()  # also sets no_new_privs, as NoNewPrivileges=yes
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main())
