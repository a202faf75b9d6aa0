"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

# --------------------------------------------------------------------------
# Two-host network topology (radium.lab.netns): a client and an appliance in
# separate network namespaces joined by a tbf-shaped veth pair.
# --------------------------------------------------------------------------
from radium.lab import netns as _netns


@pytest.fixture
def two_hosts():
    """Yield a fresh netns Topology (client, appliance); skip when namespaces can't be made."""
    ok, reason = _netns.can_create_namespaces()
    if not ok:
        pytest.skip(f"two-host topology unavailable: {reason}")
    _netns.cleanup_stale()
    topo = _netns.create_topology()
    try:
        yield topo
    finally:
        topo.close()
