"""Fixtures for the kernel-adapter tests: alg/lab's NAT lab, without servers, in namespaces
named tk-<node>-PID (tests/kernel/lab.py).

The lab is built once per session and destroyed at its end (also after failures); each test
gets it back with no ftp-alg rules, no conntrack entries, no expectations, no open sockets.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from alg.kernel.ctnetlink import Ctnetlink
from alg.lab import netns
from tests.kernel import lab as lab_module
from tests.kernel.lab import Lab


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables", "ip6tables", "conntrack"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture(scope="session")
def lab_session() -> Iterator[Lab]:
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    built = lab_module.build(os.getpid())
    try:
        yield built
    finally:
        lab_module.destroy(built)


@pytest.fixture
def lab(lab_session: Lab) -> Iterator[Lab]:
    lab_session.reset_router()
    try:
        yield lab_session
    finally:
        lab_session.close_sockets()
        lab_session.reset_router()


@pytest.fixture
def ct(lab: Lab) -> Iterator[Ctnetlink]:
    """A ctnetlink socket opened in the router's namespace."""
    with netns.enter(lab.router):
        handle = Ctnetlink()
    try:
        yield handle
    finally:
        handle.close()
