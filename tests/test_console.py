"""The operator's console (`radium-admin tui`), driven by Textual's pilot against the real parts.

The vCenter simulator (a cluster host with NVIDIA V100s, a standalone host with
AMD MI100s; the 1st and 3rd GPU of each passthrough-enabled), a real radiumd on
loopback standing in vCenter as appliance `app1` (`vcenter.register_standin`, as the
lab does), and the operator key it trusts (RADIUM_ADMIN_CONFIG).  Each test drives
the console with keys, then checks what vCenter and radiumd hold afterwards, not only
what the screen shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from support import Appliance, Client, hidden, stand_in

from radium import vcenter
from radium.appliance import ovf
from radium.remoting import list_devices, load_client_config
from radium.tui import Console, Estate
from radium.vcenter import sim

pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")
pytest.importorskip("textual", reason="textual is not installed")

pytestmark = pytest.mark.timeout(180)

MISSING = sim.missing()
USER, PASSWORD = "radium", "s3cret"
HOST = "DC0_C0_H0"
DISABLED = "0000:5e:00.0"  # the 2nd GPU of each host starts passthrough-disabled
SIZE = (160, 48)


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    """The simulator, radiumd app1 standing in it, and the operator's environment."""
    if MISSING:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(MISSING))
    root = tmp_path_factory.mktemp("console")
    vc = sim.start(
        username=USER, password=PASSWORD, clusters=1, hosts_per_cluster=1, standalone_hosts=1, vms=2
    )
    app1 = Appliance(root / "app1", name="app1")
    mp = pytest.MonkeyPatch()
    try:
        app1.start()
        settings = vcenter.resolve(
            url=vc.sdk_url, user=USER, password=PASSWORD, ca=vc.ca_file, env={}, use_profiles=False
        )
        ops = stand_in(settings, app1)
        mp.setenv("RADIUM_ADMIN_CONFIG", str(ops))
        mp.setenv("HOME", str(root / "home"))
        (root / "home").mkdir()
        yield {"vc": vc, "settings": settings, "app1": app1, "ops": ops, "root": root}
    finally:
        mp.undo()
        if app1.proc is not None:
            app1.stop()
        vc.stop()


@pytest.fixture
def vc(estate):
    with vcenter.connect(estate["settings"]) as s:
        yield s


def drive(estate: dict, script: Callable[[Console, Any], Awaitable[None]], **kwargs: Any) -> Console:
    """Run the console on `estate` and let `script(app, pilot)` drive it; the app, once closed."""
    app = Console(Estate(estate["settings"]), **kwargs)

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.reads > 0, "the first read of vCenter")
            await script(app, pilot)

    asyncio.run(main())
    app.estate.close()
    return app


async def until(pilot: Any, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Let the console run until `predicate` holds (its workers post what they find)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await pilot.pause(0.05)
    return value


def cells(app: Console, view: str) -> list[list[str]]:
    """The rows the view's table shows now, as plain text."""
    table = app.view(view).table
    return [[str(getattr(c, "plain", c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def choose(app: Console, pilot: Any, view: str, *words: str) -> None:
    """Switch to `view` and put the cursor on the first row containing every word."""
    await pilot.press({"hosts": "1", "appliances": "2", "clients": "3", "sessions": "4", "log": "5"}[view])
    rows = cells(app, view)
    index = next(i for i, r in enumerate(rows) if all(any(w in c for c in r) for w in words))
    app.view(view).table.move_cursor(row=index)
    await pilot.pause()


async def type_into(pilot: Any, field: str, text: str) -> None:
    screen = pilot.app.screen
    box = screen.query_one(f"#{field}")
    box.value = ""
    box.focus()
    await pilot.press(*text) if text else None
    await pilot.pause()


def device(vc: vcenter.Session, host: str, address: str) -> vcenter.PassthroughDevice:
    h = next(h for h in vcenter.hosts(vc) if h.name == host)
    return next(d for d in h.accelerators if d.address == address)


# --- views ----------------------------------------------------------------------------------


def test_hosts_view_lists_every_accelerator_and_the_free_ones(estate, vc):
    inventory = vcenter.hosts(vc)

    async def script(app: Console, pilot: Any) -> None:
        rows = cells(app, "hosts")
        shown = {(r[0], r[3]) for r in rows}
        assert shown == {(h.name, d.address) for h in inventory for d in h.accelerators}
        v100 = next(r for r in rows if r[0] == HOST and r[3] == "0000:3b:00.0")
        assert "Tesla V100" in v100[4] and v100[5] == "16"
        holder = next(r for r in rows if r[9] == "app1")  # the stand-in appliance holds one GPU
        assert holder[7] == "yes" and holder[8] == "yes"
        free = {h.cluster or "standalone": sum(d.free for d in h.accelerators) for h in inventory}
        summary = str(app.view("hosts").query_one(".summary").render())
        for cluster, n in free.items():
            assert f"{cluster} {n}" in summary

    drive(estate, script)


def test_the_filter_keeps_matching_rows_and_escape_clears_it(estate):
    async def script(app: Console, pilot: Any) -> None:
        everything = cells(app, "hosts")
        await pilot.press("slash", *"mi100")
        kept = cells(app, "hosts")
        assert kept and len(kept) < len(everything)
        assert all("MI100" in r[4] for r in kept)
        await pilot.press("escape")
        assert cells(app, "hosts") == everything

    drive(estate, script)


def test_appliances_and_sessions_views_show_what_radiumd_answers(estate, tmp_path):
    client = Client(estate["app1"].enroll("vm-tui"), tmp_path / "state")
    granted = client.json("request-gpus", "-n", "1", "-p", "0.5")
    try:

        async def script(app: Console, pilot: Any) -> None:
            await pilot.press("2")
            rows = await until(
                pilot,
                lambda: [r for r in cells(app, "appliances") if r[0] == "app1" and "ok" in r[4]],
                "app1 ok",
            )
            assert rows[0][3] == f"tcp://127.0.0.1:{estate['app1'].port}"
            devices = [r for r in cells(app, "appliances") if r[5].startswith("ocl-")]
            assert len(devices) == 2  # PoCL: two devices
            await pilot.press("4")
            sessions = await until(
                pilot, lambda: [r for r in cells(app, "sessions") if r[2].startswith("vm-tui@")], "session"
            )
            assert sessions[0][0] == "app1" and sessions[0][3] == granted["lease"]["parts"][0]["device_id"]
            assert sessions[0][4] == "0.50" and sessions[0][6] == "-"  # a reservation: nothing runs

        drive(estate, script, probe_interval=0.5)
    finally:
        client.run("release-gpus")


SLEEPER = "import time; print('ready', flush=True); time.sleep(300)"


def test_end_a_session_kills_its_run_and_frees_its_lease(estate, tmp_path):
    client = Client(estate["app1"].enroll("vm-run"), tmp_path / "state")
    work = tmp_path / "work"
    argv = hidden(client, f"mkdir -p {work}", str(work), "run", "-p", "0.25", "--", "python3", "-c", SLEEPER)
    run = subprocess.Popen(argv, env=client.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None and run.stdout.readline().strip() == "ready"
    ops = load_client_config(estate["ops"])

    def held_by(name: str) -> int:
        [answer] = asyncio.run(list_devices(ops))
        assert answer.value is not None
        return sum(1 for d in answer.value.devices for lease in d.leases if lease.client == name)

    try:
        assert held_by("vm-run") == 1

        async def script(app: Console, pilot: Any) -> None:
            await pilot.press("4")
            await until(pilot, lambda: any("python3 -c" in r[6] for r in cells(app, "sessions")), "the run")
            await choose(app, pilot, "sessions", "vm-run")
            await pilot.press("e")
            question = str(app.screen.query_one(".question").render())
            assert "python3 -c" in question and "vm-run" in question
            await pilot.press("y")
            await until(pilot, lambda: app.running is None and run.poll() is not None, "the session ended")
            assert any(text.startswith("ended session") for _, _, text, _ in app.log_view.entries)
            await until(pilot, lambda: not any("vm-run" in r[2] for r in cells(app, "sessions")), "row gone")

        drive(estate, script, probe_interval=0.5)
        assert run.wait(10) == 137
        assert "ended by operator ops" in (run.stderr.read() if run.stderr else "")
        assert held_by("vm-run") == 0  # radiumd holds nothing for it any more
    finally:
        if run.poll() is None:
            run.kill()


# --- actions: each checked in vCenter or radiumd afterwards ------------------------------------


def test_passthrough_enable_and_disable_from_the_hosts_view(estate, vc):
    async def script(app: Console, pilot: Any) -> None:
        await choose(app, pilot, "hosts", HOST, DISABLED)
        await pilot.press("p")
        assert type(app.screen).__name__ == "Confirm"
        await pilot.press("y")
        await until(pilot, lambda: device(vc, HOST, DISABLED).enabled, "passthrough enabled in vCenter")
        await until(
            pilot,
            lambda: any(
                r[0] == HOST and r[3] == DISABLED and r[8] == "reboot pending" for r in cells(app, "hosts")
            ),
            "the view showing the pending reboot",
        )
        await choose(app, pilot, "hosts", HOST, DISABLED)
        await pilot.press("P", "y")
        await until(pilot, lambda: not device(vc, HOST, DISABLED).enabled, "passthrough disabled in vCenter")

    drive(estate, script)


def test_a_change_made_behind_the_consoles_back_appears_by_itself(estate, vc):
    async def script(app: Console, pilot: Any) -> None:
        reads = app.reads
        vcenter.set_passthrough(vc, "DC0_H0", [DISABLED], enable=True)  # as radium-admin would
        try:
            await until(
                pilot,
                lambda: any(
                    r[0] == "DC0_H0" and r[3] == DISABLED and r[7] == "yes" for r in cells(app, "hosts")
                ),
                "the change on screen",
            )
            assert app.reads > reads  # read again because vCenter pushed the change, no key pressed
        finally:
            vcenter.set_passthrough(vc, "DC0_H0", [DISABLED], enable=False)
        # A VM powered off behind its back: the appliance standing in vCenter as app1.
        vm = next(v for v in vm_refs(vc) if v.name == "app1")
        vcenter.wait(vc, vm.PowerOffVM_Task())
        try:
            await until(
                pilot,
                lambda: any(r[0] == "app1" and r[2] == "poweredOff" for r in cells(app, "appliances")),
                "the appliance powered off on screen",
            )
        finally:
            vcenter.wait(vc, vm.PowerOnVM_Task())
        await until(
            pilot,
            lambda: any(r[0] == "app1" and r[2] == "poweredOn" for r in cells(app, "appliances")),
            "the appliance powered on again",
        )

    drive(estate, script, probe_interval=0)


def vm_refs(vc: vcenter.Session) -> list[Any]:
    from pyVmomi import vim

    content = vc.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


def test_register_and_unregister_a_client_vm(estate, vc):
    vm = "DC0_C0_RP0_VM0"
    app1 = estate["app1"]

    async def script(app: Console, pilot: Any) -> None:
        await pilot.press("3", "r")
        form = app.screen
        await type_into(pilot, "vm", vm)
        await type_into(pilot, "appliances", "nope")
        assert "not an appliance here: nope" in str(form.query_one("#appliances-problem").render())
        assert form.query_one("#submit").disabled
        await type_into(pilot, "appliances", "app1")
        await pilot.press("enter")
        await until(pilot, lambda: (app1.dir / "clients.d" / f"{vm}.key").exists(), "the key on app1")
        await until(
            pilot, lambda: any(r[0] == vm for r in cells(app, "clients")), "the VM in the clients view"
        )
        registered = next(c for c in vcenter.list_clients(vc) if c.vm == vm)
        assert registered.appliances == ["app1"] and registered.client == vm

        await choose(app, pilot, "clients", vm)
        await pilot.press("u", "y")
        await until(pilot, lambda: not (app1.dir / "clients.d" / f"{vm}.key").exists(), "the key revoked")
        await until(pilot, lambda: not any(c.vm == vm for c in vcenter.list_clients(vc)), "guestinfo cleared")

    drive(estate, script)


def test_enrol_and_revoke_a_client_key(estate, tmp_path):
    bundle = tmp_path / "laptop1.radium.toml"
    key = estate["app1"].dir / "clients.d" / "laptop1.key"

    async def script(app: Console, pilot: Any) -> None:
        await choose(app, pilot, "appliances", "app1")
        await pilot.press("k")
        await type_into(pilot, "name", "bad name")
        assert "invalid client name" in str(app.screen.query_one("#name-problem").render())
        await type_into(pilot, "name", "laptop1")
        await type_into(pilot, "bundle", str(bundle))
        await pilot.press("enter")
        await until(pilot, lambda: key.exists() and bundle.exists(), "the key and its bundle")
        assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600
        await until(pilot, lambda: app.running is None, "the action's end")

        await choose(app, pilot, "appliances", "app1")
        await pilot.press("K")
        await type_into(pilot, "name", "laptop1")
        await pilot.press("enter")
        await until(pilot, lambda: not key.exists(), "the key revoked")

    drive(estate, script)
    assert load_client_config(bundle).client.name == "laptop1"


def test_deploy_and_remove_an_appliance(estate, vc, tmp_path):
    package = ovf.write_ova(tmp_path / "radium-appliance.ova")
    enabled = "0000:86:00.0"

    async def script(app: Console, pilot: Any) -> None:
        await choose(app, pilot, "hosts", HOST, enabled)
        await pilot.press("d")
        form = app.screen
        assert form.query_one("#host").value == HOST  # from the row chosen
        await type_into(pilot, "name", "gpu 1")
        assert "invalid name" in str(form.query_one("#name-problem").render())
        await type_into(pilot, "name", "gpu-tui")
        await type_into(pilot, "gpus", enabled)
        await type_into(pilot, "package", str(package))
        await type_into(pilot, "ip", "10.0.0.300/24")
        assert "ADDR/PREFIX" in str(form.query_one("#ip-problem").render())
        await type_into(pilot, "ip", "dhcp")
        await type_into(pilot, "wait", "0")
        assert not form.query_one("#submit").disabled
        await pilot.press("enter")
        await until(pilot, lambda: any(a.vm == "gpu-tui" for a in vcenter.list_appliances(vc)), "the VM")
        await until(pilot, lambda: app.running is None, "the deploy's end")
        made = next(a for a in vcenter.list_appliances(vc) if a.vm == "gpu-tui")
        assert [g.address for g in made.gpus] == [enabled] and made.server_public_key
        assert any(r[0] == "gpu-tui" for r in cells(app, "appliances"))
        assert any("deployed on" in e[2] for e in app.view("log").entries)  # type: ignore[attr-defined]

        await choose(app, pilot, "appliances", "gpu-tui")
        await pilot.press("x", "y")
        await until(pilot, lambda: not any(a.vm == "gpu-tui" for a in vcenter.list_appliances(vc)), "removed")

    drive(estate, script)


def test_a_failed_action_says_why_and_changes_nothing(estate, vc):
    async def script(app: Console, pilot: Any) -> None:
        await choose(app, pilot, "hosts", HOST, DISABLED)
        held = next(r for r in cells(app, "hosts") if r[9] == "app1")
        await choose(app, pilot, "hosts", held[0], held[3])
        await pilot.press("P", "y")  # disable the GPU the running stand-in appliance holds: refused
        await until(pilot, lambda: app.running is None and len(app.view("log").entries) > 2, "the refusal")
        errors = [e[2] for e in app.view("log").entries if e[3] == "error"]  # type: ignore[attr-defined]
        assert any("app1" in text for text in errors), errors
        assert device(vc, held[0], held[3]).enabled

    drive(estate, script)


# --- vCenter going away and coming back --------------------------------------------------------


@contextlib.contextmanager
def _behind_a_relay(estate: dict) -> Iterator[tuple[_Relay, dict]]:
    """vCenter behind a relay of its own (stopping it is vCenter going away): the relay, and the
    estate with settings that reach vCenter through it; the relay is stopped at the end."""
    proxy = _Relay(estate["vc"].port)
    settings = vcenter.resolve(
        url=f"https://127.0.0.1:{proxy.port}/sdk", user=USER, password=PASSWORD, insecure=True, env={},
        use_profiles=False,
    )  # fmt: skip
    try:
        yield proxy, {**estate, "settings": settings}
    finally:
        proxy.stop()


def test_vcenter_unreachable_raises_a_banner_and_the_console_recovers(estate, tmp_path):
    """vCenter behind a relay of its own, which is stopped and started again while the console runs."""

    async def script(app: Console, pilot: Any) -> None:
        proxy.stop()
        await until(pilot, lambda: "vCenter" in app.problems, "the banner")
        assert app.query_one("#banner").display
        assert app.screen.query_one("#banner").render()
        assert cells(app, "hosts")  # what was read stays on screen
        await pilot.press("2")  # keys still work
        assert app.query_one("TabbedContent").active == "appliances"
        proxy.start()
        await until(pilot, lambda: "vCenter" not in app.problems, "the recovery", timeout=60)
        assert not app.query_one("#banner").display

    with _behind_a_relay(estate) as (proxy, relayed):
        drive(relayed, script, probe_interval=0)


def test_a_read_on_a_connection_vcenter_dropped_meanwhile_logs_in_afresh_without_a_banner(estate):
    """The console keeps its reading session between reads; vCenter going away and coming back
    between two reads leaves that session's connection dead: the next read logs in again at once,
    and no problem is shown for it (the watcher is off: only reads talk to vCenter here)."""

    async def script(app: Console, pilot: Any) -> None:
        proxy.stop()  # the kept session's connection is cut
        proxy.start()
        await pilot.press("f5")
        await until(pilot, lambda: app.reads == 2, "the second read")
        assert app.problems == {}
        assert [e for e in app.log_view.entries if e[3] == "error"] == []

    with _behind_a_relay(estate) as (proxy, relayed):
        drive(relayed, script, watch=False, probe_interval=0)


def test_a_failed_read_is_tried_again_by_itself_until_vcenter_answers(estate):
    """A read that fails says when it will be tried again, and is: with nothing else reading (no
    watcher, no key pressed), the banner goes once vCenter is back."""

    async def script(app: Console, pilot: Any) -> None:
        proxy.stop()
        await pilot.press("f5")
        await until(pilot, lambda: "vCenter" in app.problems, "the banner")
        assert "retrying in 1 s" in str(app.banner.render())
        proxy.start()
        await until(pilot, lambda: "vCenter" not in app.problems, "the recovery")
        assert app.reads >= 2 and not app.banner.display

    with _behind_a_relay(estate) as (proxy, relayed):
        drive(relayed, script, watch=False, probe_interval=0)


def test_a_problem_that_arrives_while_the_console_closes_is_kept_not_a_crash(estate):
    """A worker's message (vCenter failing meanwhile) handled while the console takes its views apart:
    it is kept, and the console closes without a traceback (the log's table already gone)."""
    from textual.widgets import DataTable

    from radium.tui.messages import Problem, Recovered

    async def script(app: Console, pilot: Any) -> None:
        await app.log_view.query_one(DataTable).remove()  # as closing does, child by child
        app.post_message(Problem("vCenter", "connection refused", retry_in=1.0))
        await until(pilot, lambda: "vCenter" in app.problems, "the problem")
        assert app.log_view.entries[0][1:] == ("vCenter", "connection refused (retrying in 1 s)", "error")
        app.post_message(Recovered("vCenter"))
        await until(pilot, lambda: "vCenter" not in app.problems, "the recovery")
        assert app.log_view.entries[0][1:3] == ("vCenter", "answers again")

    drive(estate, script, probe_interval=0)


class _Relay:
    """A TCP relay to the simulator on a port of its own: stopping it is vCenter going away."""

    def __init__(self, target: int) -> None:
        import socket

        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: Any = None
        self.start()

    def start(self) -> None:
        import socket
        import socketserver
        import threading

        target = self.target

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                up = socket.create_connection(("127.0.0.1", target))
                done = threading.Event()

                def pump(a: socket.socket, b: socket.socket) -> None:
                    try:
                        while data := a.recv(65536):
                            b.sendall(data)
                    except OSError:
                        pass
                    done.set()

                threading.Thread(target=pump, args=(up, self.request), daemon=True).start()
                threading.Thread(target=pump, args=(self.request, up), daemon=True).start()
                while not done.wait(0.1):
                    if server.stopping:
                        break
                for s in (up, self.request):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = False  # server_close() waits for each connection to be closed
            block_on_close = True
            stopping = False

        server = Server(("127.0.0.1", self.port), Pipe)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stopping = True
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def test_radium_admin_tui_is_a_command(estate):
    """`radium-admin tui --help` and `radium-tui --help` describe the console (it needs a terminal)."""
    import subprocess

    from support import BIN

    for argv in ([str(BIN / "radium-admin"), "tui", "--help"], [str(BIN / "radium-tui"), "--help"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "console" in out.stdout and "--profile" in out.stdout
