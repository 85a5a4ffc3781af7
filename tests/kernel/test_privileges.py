"""The daemon's kernel interfaces work without uid 0, with CAP_NET_ADMIN alone (issue 10 item 8).

As systemd runs it (User=ftp-alg, AmbientCapabilities=CAP_NET_ADMIN), `setpriv` starts the
probe as uid/gid 65534 with CAP_NET_ADMIN as its only capability, inside a namespace of its
own: it binds an NFQUEUE, dumps expectations over ctnetlink and joins the conntrack DESTROY
group. Without the capability each of them fails with EPERM.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.kernel import hdns

pytestmark = pytest.mark.netns

DROP_TO_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
CAP_NET_ADMIN = 1 << 12


def _probe(
    ns: str, *setpriv_caps: str, python: str = sys.executable, env: dict[str, str] | None = None
) -> dict[str, Any]:
    probe = hdns.probe_argv("caps", "--queue", "3", python=python)
    proc = hdns.popen(ns, [*DROP_TO_NOBODY, *setpriv_caps, *probe], env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_cap_net_admin_alone_is_enough() -> None:
    with hdns.namespace("pv") as ns:
        got = _probe(ns, "--inh-caps=+net_admin", "--ambient-caps=+net_admin")
    assert got["uid"] == 65534 and int(got["cap_eff"], 16) == CAP_NET_ADMIN
    assert got["nfqueue"] == "ok"
    assert got["raw_bind_errno"] == 0
    assert got["ctnetlink"].startswith("ok")
    assert got["events"] == "ok"


def test_without_the_capability_everything_is_refused() -> None:
    with hdns.namespace("pv") as ns:
        got = _probe(ns)
    assert got["uid"] == 65534 and int(got["cap_eff"], 16) == 0
    assert got["nfqueue"].startswith("error")
    assert got["raw_bind_errno"] == errno.EPERM
    assert got["ctnetlink_errno"] == errno.EPERM
    assert got["events_errno"] == errno.EPERM


SANDBOX_PYTHON = "/usr/bin/python3"  # Debian's python3-seccomp is built for it


def _sandbox_unavailable() -> str | None:
    if shutil.which("systemd-analyze") is None:
        return "needs systemd-analyze"
    done = subprocess.run([SANDBOX_PYTHON, "-c", "import seccomp"], capture_output=True)
    return None if done.returncode == 0 else "needs python3-seccomp"


def test_the_units_sandbox_leaves_the_daemons_kernel_interfaces_working() -> None:
    """docs/ftp-alg.service's SystemCallFilter and MemoryDenyWriteExecute, rebuilt by
    tests/kernel/sandbox.py, do not stop CPython, netfilterqueue or ctnetlink."""
    reason = _sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    unit = os.path.join(hdns.ROOT, "docs", "ftp-alg.service")
    sandbox = [SANDBOX_PYTHON, os.path.join(hdns.ROOT, "tests", "kernel", "sandbox.py"), unit, "--"]
    caps = ("--inh-caps=+net_admin", "--ambient-caps=+net_admin")
    # Once the capabilities are gone the interpreter must be reachable by uid 65534 (the
    # lab's virtual environment may live under /root): the system one, with this tree and
    # the environment's packages on its path, stands in.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{hdns.ROOT}:{site}"}
    with hdns.namespace("sb") as ns:
        plain = _probe(ns, *caps)
        got = _probe(ns, *caps, *sandbox, python=SANDBOX_PYTHON, env=env)
    assert (plain["seccomp"], plain["mdwe"], plain["wx_mmap"], plain["setaffinity"]) == (0, 0, 0, 0)
    assert (got["seccomp"], got["nnp"], got["mdwe"]) == (2, 1, 1)  # filter, NNP, MDWE on
    assert got["wx_mmap"] == errno.EACCES and got["setaffinity"] == errno.EPERM
    assert got["nfqueue"] == "ok" and got["raw_bind_errno"] == 0
    assert got["ctnetlink"].startswith("ok") and got["events"] == "ok"
