"""What each view of the console looks like, at 80x24 and at 160x48 (SVG snapshots, pytest-textual-snapshot).

The console reads the vCenter simulator (hosts, the stand-in appliance, a
registered client VM); what varies from run to run is fixed before the picture is
taken: the header's vCenter address and the log's times.  The appliances' own
answers (ports, lease ids) vary, so the console is not let ask them here: the
pilot tests in test_console.py check those.  After a deliberate change of the
console's look, run `./dev test tests/test_console_snapshots.py --snapshot-update`
and look at the SVGs before committing them.
"""

from __future__ import annotations

import time

import pytest

from radium import vcenter
from radium.remoting import KeyPair, new_identity
from radium.tui import Console, Estate
from radium.vcenter import sim

pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")
pytest.importorskip("pytest_textual_snapshot", reason="pytest-textual-snapshot is not installed")

pytestmark = pytest.mark.timeout(120)

MISSING = sim.missing()
VIEWS = {"hosts": "1", "appliances": "2", "clients": "3", "sessions": "4", "log": "5"}
SIZES = {"80x24": (80, 24), "160x48": (160, 48)}


@pytest.fixture(scope="module")
def settings():
    if MISSING:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(MISSING))
    vc = sim.start(username="u", password="p", clusters=1, hosts_per_cluster=1, standalone_hosts=1, vms=2)
    try:
        s = vcenter.resolve(url=vc.sdk_url, user="u", password="p", ca=vc.ca_file, env={}, use_profiles=False)
        with vcenter.connect(s) as session:
            operator = new_identity("ops")
            # Nothing is dialled: the console does not ask appliances in these tests.
            vcenter.register_standin(
                session,
                name="gpu1",
                address="127.0.0.1",
                port=7450,
                server_public_key=KeyPair.generate().public,
                admin=operator,
            )
        yield s
    finally:
        vc.stop()


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("view", list(VIEWS))
def test_view(snap_compare, settings, view, size):
    app = Console(Estate(settings), watch=False, probe_interval=0)

    async def run_before(pilot) -> None:
        deadline = time.monotonic() + 30
        while app.reads == 0 and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert app.reads, "the console did not read the simulator"
        app.sub_title = "vCenter (simulator)"
        app.log_view.entries = [
            (0.0, "console", "radium: vCenter (simulator)", "info"),
            (0.0, "vCenter", "Reconfigure virtual machine: success", "ok"),
            (0.0, "vCenter", "cannot reach vCenter: connection refused (retrying in 2 s)", "error"),
        ]
        app.log_view.on_mount()
        await pilot.press(VIEWS[view])
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=SIZES[size], run_before=run_before)
    finally:
        app.estate.close()
