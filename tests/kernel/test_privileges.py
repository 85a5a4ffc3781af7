"""The daemon's kernel interfaces work without uid 0, with CAP_NET_ADMIN alone (issue 10 item 8).

As systemd runs it (User=ftp-alg, AmbientCapabilities=CAP_NET_ADMIN), `setpriv` starts the
probe as uid/gid 65534 with CAP_NET_ADMIN as its only capability, inside a namespace of its
own: it binds an NFQUEUE, dumps expectations over ctnetlink and joins the conntrack DESTROY
group. Without the capability each of them fails with EPERM.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from tests.kernel import hdns

pytestmark = pytest.mark.netns

DROP_TO_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
CAP_NET_ADMIN = 1 << 12


def _probe(ns: str, *setpriv_caps: str) -> dict[str, Any]:
    proc = hdns.popen(
        ns, [*DROP_TO_NOBODY, *setpriv_caps, *hdns.probe_argv("caps", "--queue", "3")]
    )
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
