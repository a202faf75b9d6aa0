"""The operator's console: the whole estate on one keyboard-driven screen, live.

Views (1-5): Hosts, Appliances, Clients, Sessions, Log.  Every operator action is
one key away and calls one operation of the library through `Estate`; nothing
that waits ever runs on Textual's event loop:

- the first read shows the estate as it comes (a page of hosts at a time,
  `vcenter.inventory_pages`), so a large estate fills the screen at once;
- a watcher thread follows vCenter's pushed changes (`vcenter.estate_touches`) and
  posts `EstateChanged`; a read worker then reads again what they touched (the hosts
  touched and those of the VMs touched; appliances and clients when a VM changed),
  one read at a time: changes that arrive during a read make one more after it;
- a probe worker asks every appliance's radiumd (every `PROBE_INTERVAL` s, and after
  each read) for its devices, load, leases and queue;
- an action runs in a worker of its own; its progress events reach the status line
  and the log, its result or error the log, and the views update when it is done.

A part that cannot be reached (vCenter, an appliance) raises a banner that says
which and why; the watcher retries with backoff and the banner goes when it answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane

from radium import vcenter
from radium.remoting import VERSION
from radium.vcenter import VCenterError

from .estate import BACKOFF_S, Estate, Snapshot, describe
from .forms import Confirm, DeployForm, EnrollForm, Enrolling, RegisterForm, Registering, RevokeForm
from .help import HelpScreen
from .messages import ActionDone, EstateChanged, EstateRead, Probed, Problem, Progressed, Recovered
from .views import AppliancesView, ClientsView, HostsView, LogView, SessionsView
from .views.base import TableView

PROBE_INTERVAL = 5.0  # seconds between asking the appliances (their load and leases)

VIEWS = (
    ("hosts", "Hosts"),
    ("appliances", "Appliances"),
    ("clients", "Clients"),
    ("sessions", "Sessions"),
    ("log", "Log"),
)


class Console(App[None]):
    """`radium-admin tui`: the estate of one vCenter and its appliances."""

    CSS_PATH = "console.tcss"
    TITLE = "Radium"
    AUTO_FOCUS = "#hosts-view DataTable"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "view('hosts')", "Hosts", id="view.hosts"),
        Binding("2", "view('appliances')", "Appliances", id="view.appliances"),
        Binding("3", "view('clients')", "Clients", id="view.clients"),
        Binding("4", "view('sessions')", "Sessions", id="view.sessions"),
        Binding("5", "view('log')", "Log", id="view.log"),
        Binding("slash", "filter", "Filter", id="filter"),
        Binding("p", "passthrough(True)", "Passthrough on", id="passthrough.enable"),
        Binding("P", "passthrough(False)", "off", id="passthrough.disable"),
        Binding("d", "deploy", "Deploy", id="appliance.deploy"),
        Binding("x", "remove", "Remove", id="appliance.remove"),
        Binding("r", "register", "Register VM", id="client.register"),
        Binding("u", "unregister", "Unregister", id="client.unregister"),
        Binding("k", "enroll", "Enrol key", id="key.enroll"),
        Binding("K", "revoke", "Revoke key", id="key.revoke"),
        Binding("e", "end_session", "End session", id="session.end"),
        Binding("f5", "refresh", "Refresh", id="refresh", show=False),
        Binding("t", "toggle_dark", "Theme", id="theme", show=False),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, estate: Estate, *, watch: bool = True, probe_interval: float = PROBE_INTERVAL) -> None:
        super().__init__()
        self.estate = estate
        self.snapshot: Snapshot | None = None
        self.problems: dict[str, str] = {}
        self.running: str | None = None  #: the action in flight, if any
        self._watch = watch
        self._probe_interval = probe_interval
        self._stop = threading.Event()
        self._reading = False
        self._read_again = False
        self._read_whole = False  # a whole read is asked for (not only what changes touched)
        self._read_failures = 0  # failed reads in a row: each is tried again after BACKOFF_S
        self._touched: vcenter.Touched | None = None  # what changes not yet read touched (watcher thread)
        self._touched_lock = threading.Lock()
        self._probing = False
        self.reads = 0  #: reads done (for tests and the benchmark)
        self.sub_title = estate.where
        # Made once and kept: `query_one` on the app searches the screen on top, which may be a form.
        self.hosts, self.appliances = HostsView(id="hosts-view"), AppliancesView(id="appliances-view")
        self.clients, self.sessions = ClientsView(id="clients-view"), SessionsView(id="sessions-view")
        self.log_view = LogView(id="log-view")
        self.views: dict[str, TableView] = {
            "hosts": self.hosts,
            "appliances": self.appliances,
            "clients": self.clients,
            "sessions": self.sessions,
            "log": self.log_view,
        }
        self.banner = Static("", id="banner")
        self.status_line = Static("", id="status")
        self.filter_box = Input(
            placeholder="filter: rows containing...  (Enter: keep, Escape: clear)", id="filter"
        )
        self.tabs = TabbedContent(id="views")

    # --- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield self.banner
        with self.tabs:
            for vid, title in VIEWS:
                with TabPane(title, id=vid):
                    yield self.views[vid]
        yield self.filter_box
        yield self.status_line
        yield Footer()

    def on_mount(self) -> None:
        self.log_line("console", f"radium {VERSION}: {self.estate.where}")
        self.read()
        if self._watch:
            threading.Thread(target=self._watch_vcenter, name="radium-tui-watch", daemon=True).start()
        if self._probe_interval > 0:
            self.set_interval(self._probe_interval, self.probe)

    def on_unmount(self) -> None:
        self._stop.set()

    def _showing(self) -> bool:
        """Whether the views are there to show what a worker found (not when the console is closing)."""
        return not self._stop.is_set() and self.hosts.is_attached

    def view(self, vid: str | None = None) -> TableView:
        return self.views[vid or self.tabs.active]

    # --- reading, watching, probing --------------------------------------------------------

    def _watch_vcenter(self) -> None:
        """vCenter's pushed changes, for as long as the console runs (a thread of its own)."""
        failures = 0
        while not self._stop.is_set():
            try:
                for touched in self.estate.changes(self._stop):
                    if touched is None:  # the watch is up: after a failure, that is the recovery
                        if failures:
                            failures = 0
                            self.post_message(Recovered("vCenter"))
                            self.post_message(EstateChanged(None))  # what changed while it was away
                        continue
                    with self._touched_lock:
                        if self._touched is None:
                            self._touched = vcenter.Touched()
                        self._touched.update(touched)
                    self.post_message(EstateChanged(touched))
            except Exception as exc:  # noqa: BLE001 (any failure: say it, wait, try again)
                wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                self.post_message(Problem("vCenter", describe(exc), retry_in=wait))
                if self._stop.wait(wait):
                    return

    def read(self, whole: bool = True) -> None:
        """Read the estate (now, or once the read in flight ends): all of it, or (`whole` False) what
        the changes vCenter pushed since the last read touched."""
        self._read_whole = self._read_whole or whole
        if self._reading:
            self._read_again = True
            return
        self._reading = True
        whole, self._read_whole = self._read_whole, False
        with self._touched_lock:
            touched, self._touched = self._touched, None
        self._read_worker(whole or touched is None, touched)

    @work(thread=True, exclusive=False, group="read")
    def _read_worker(self, whole: bool, touched: vcenter.Touched | None) -> None:
        # The first read shows each part as it comes (a screen of hosts in a fraction of a second
        # on a large estate); later ones replace the whole at once, without a table growing again.
        # A change re-reads what it touched (a host: one small page), whole reads the rest.
        last = self.snapshot
        for attempt in (1, 2):
            try:
                if whole or last is None or touched is None:
                    for snapshot in self.estate.read_parts(partial=last is None, last=last):
                        self.post_message(EstateRead(snapshot))
                else:
                    try:
                        self.post_message(EstateRead(self.estate.refresh(last, touched)))
                    except VCenterError:  # e.g. an object gone meanwhile: read everything
                        self.post_message(EstateRead(self.estate.read()))
                return
            except Exception as exc:  # noqa: BLE001 (the banner says it; the read is tried again)
                if attempt == 1 and self.estate.failed_on_kept_session:
                    continue  # a connection kept from before vCenter went away and came back: log in afresh
                wait = BACKOFF_S[min(self._read_failures, len(BACKOFF_S) - 1)]
                self.post_message(Problem("vCenter", describe(exc), retry_in=wait))
                self.post_message(EstateRead(None, retry_in=wait))

    @on(EstateRead)
    def estate_read(self, message: EstateRead) -> None:
        if not self._showing():
            return
        if message.snapshot is not None and not message.snapshot.complete:
            if self.snapshot is None:  # only the first read is shown in parts
                self.hosts.show(message.snapshot)
                if message.snapshot.reading == "clients":  # the appliances are read
                    self.appliances.show(message.snapshot)
            return
        self._reading = False
        if message.snapshot is not None:
            self._read_failures = 0
            self.reads += 1
            self.snapshot = message.snapshot
            if "vCenter" in self.problems:
                self.recovered(Recovered("vCenter"))
            for view in (self.hosts, self.appliances, self.clients):
                view.show(message.snapshot)
            if self._probe_interval > 0:
                self.probe()
        else:
            self._read_whole = True  # what the failed read was to re-read is not known any more
            self._read_failures += 1
            if message.retry_in is not None:
                # Tried again whether or not the watcher fails too: a read can fail alone (a
                # connection cut), and nothing else would read again until vCenter pushes a change.
                self.set_timer(message.retry_in, lambda: self.read() if self._showing() else None)
        if self._read_again:
            self._read_again = False
            self.read(whole=False)  # (or whole, if a whole read was asked for meanwhile)

    @on(EstateChanged)
    def estate_changed(self, message: EstateChanged) -> None:
        self.read(whole=message.touched is None)

    def probe(self) -> None:
        if self._probing or self.snapshot is None:
            return
        self._probing = True
        self._probe_worker(list(self.snapshot.appliances))

    @work(thread=True, group="probe")
    def _probe_worker(self, appliances: list[vcenter.Appliance]) -> None:
        try:
            probes = self.estate.probe(appliances)
        except Exception as exc:  # noqa: BLE001 (e.g. an unreadable operator configuration)
            self.post_message(Problem("appliances", describe(exc)))
            probes = {}
        self.post_message(Probed(probes))

    @on(Probed)
    def probed(self, message: Probed) -> None:
        self._probing = False
        if not self._showing():
            return
        self.appliances.probed(message.probes)
        self.sessions.probed(message.probes)
        for source in [s for s in self.problems if s.startswith("appliance ")]:
            if source.removeprefix("appliance ") not in message.probes:  # gone from vCenter: no banner
                del self.problems[source]
                self._show_banner()
        for name, p in message.probes.items():
            source = f"appliance {name}"
            a = self.appliances.appliances.get(name)
            if p.health.reachable or (a is not None and a.power_state != "poweredOn"):
                if source in self.problems:
                    self.recovered(Recovered(source))
            elif self.problems.get(source) != p.health.error:
                self.problem(Problem(source, p.health.error or "unreachable"))

    # --- problems --------------------------------------------------------------------------

    @on(Problem)
    def problem(self, message: Problem) -> None:
        new = self.problems.get(message.source) != message.text
        self.problems[message.source] = message.text
        retry = f" (retrying in {message.retry_in:g} s)" if message.retry_in else ""
        if new:
            self.log_line(message.source, message.text + retry, "error")
        self._show_banner(retry)

    @on(Recovered)
    def recovered(self, message: Recovered) -> None:
        if self.problems.pop(message.source, None) is not None:
            self.log_line(message.source, "answers again", "ok")
        self._show_banner()

    def _show_banner(self, suffix: str = "") -> None:
        banner = self.banner
        banner.display = bool(self.problems)
        lines = [f"{source}: {text}" for source, text in sorted(self.problems.items())]
        if lines:
            lines[-1] += suffix
        banner.update("\n".join(lines))

    def log_line(self, source: str, text: str, level: str = "info") -> None:
        self.log_view.add(source, text, level)

    # --- actions ---------------------------------------------------------------------------

    def start(self, action: str, call: Callable[[vcenter.Progress], list[str]]) -> None:
        """Run `call` (one operation) in a worker; its progress and outcome go to the status line and log."""
        if self.running:
            self.notify(f"{self.running} is still running", severity="warning")
            return
        self.running = action
        self.log_line("console", action)
        self._set_status(f"{action}...")
        self._action_worker(action, call)

    @work(thread=True, group="action")
    def _action_worker(self, action: str, call: Callable[[vcenter.Progress], list[str]]) -> None:
        def progress(event: vcenter.ProgressEvent) -> None:
            self.post_message(Progressed(action, event))

        try:
            lines = call(progress)
        except Exception as exc:  # noqa: BLE001 (its own text, in the log and a notice)
            self.post_message(ActionDone(action, False, [describe(exc)]))
            return
        self.post_message(ActionDone(action, True, lines))

    @on(Progressed)
    def progressed(self, message: Progressed) -> None:
        e = message.event
        if isinstance(e, vcenter.Step):
            self.log_line("console", e.text)
            self._set_status(f"{message.action}: {e.text}")
        elif isinstance(e, vcenter.TaskProgress):
            pct = f" {e.percent}%" if e.percent is not None else ""
            self._set_status(f"{message.action}: {e.description} {e.state}{pct}")
            if e.done:
                self.log_line(
                    "vCenter", f"{e.description}: {e.error or e.state}", "error" if e.error else "ok"
                )
        elif isinstance(e, vcenter.Transfer):
            pct = 100 * e.done // max(1, e.total)
            self._set_status(f"{message.action}: {e.description} {pct}% of {e.total / 2**20:,.1f} MiB")

    @on(ActionDone)
    def action_done(self, message: ActionDone) -> None:
        self.running = None
        self._set_status("")
        for line in message.lines:
            self.log_line("console" if message.ok else "error", line, "ok" if message.ok else "error")
        if message.ok:
            self.notify(
                message.lines[0] if message.lines else f"{message.action}: done", title=message.action
            )
        else:
            self.notify(message.lines[0], title=f"{message.action} failed", severity="error", timeout=10)
        self.read()

    def _set_status(self, text: str) -> None:
        status = self.status_line
        status.update(text)
        status.set_class(bool(text), "-active")

    def action_view(self, vid: str) -> None:
        self.tabs.active = vid
        self.view(vid).table.focus()

    def action_filter(self) -> None:
        box = self.filter_box
        box.display = True
        box.value = self.view().filter_text
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.view().set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def filter_kept(self) -> None:
        box = self.filter_box
        box.display = bool(box.value)
        self.view().table.focus()

    def on_key(self, event: Any) -> None:
        box = self.filter_box
        if event.key == "escape" and box.has_focus:
            box.value = ""
            box.display = False
            self.view().set_filter("")
            self.view().table.focus()
            event.stop()

    @on(TabbedContent.TabActivated)
    def tab_activated(self) -> None:
        box = self.filter_box
        box.value = self.view().filter_text
        box.display = bool(box.value)

    def action_refresh(self) -> None:
        self.read()
        self.probe()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS))

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme != "textual-light" else "textual-dark"

    # passthrough

    def action_passthrough(self, enable: bool) -> None:
        chosen = self.hosts.selected_device() if self._active() == "hosts" else None
        if chosen is None:
            self.notify("choose a device in the Hosts view (1) first", severity="warning")
            return
        host, device = chosen
        verb = "enable" if enable else "disable"
        question = (
            f"{verb.capitalize()} passthrough of {device.address} ({device.vendor} {device.model}) "
            f"on {host.name}?\nIt takes effect when the host is next rebooted."
        )

        def go(yes: bool | None) -> None:
            if not yes:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                change = self.estate.set_passthrough(host.name, [device.address], enable)
                lines = [
                    f"{d.address}: passthrough {'enabled' if d.enabled else 'disabled'}"
                    + (" (unchanged)" if not d.changed else "")
                    for d in change.devices
                ]
                return lines + ([change.note] if change.note else [])

            self.start(f"passthrough {verb} {host.name} {device.address}", call)

        self.push_screen(Confirm(question, yes=verb.capitalize()), go)

    # appliances

    def action_deploy(self) -> None:
        values: dict[str, str] = {}
        hosts: list[str] = []
        if self.snapshot is not None:
            hosts = [h.name for h in self.snapshot.hosts]
            chosen = self.hosts.selected_device()
            if chosen is not None:
                values["host"] = chosen[0].name

        def go(request: vcenter.DeployRequest | None) -> None:
            if request is None:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                d = self.estate.deploy(request, progress)
                lines = [f"appliance {d.vm} deployed on {d.host} ({d.id}), {len(d.gpus)} GPU(s)"]
                lines += [f"server key {d.server_public_key}", f"power {d.power_state}"]
                if d.address:
                    lines.append(f"address {d.address}")
                return lines + list(d.warnings)

            self.start(f"deploy {request.name}", call)

        self.push_screen(DeployForm(values, hosts), go)

    def action_remove(self) -> None:
        a = self.appliances.selected_appliance() if self._active() == "appliances" else None
        if a is None:
            self.notify("choose an appliance in the Appliances view (2) first", severity="warning")
            return

        def go(yes: bool | None) -> None:
            if not yes:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                r = self.estate.remove(a.name, progress)
                return [
                    f"appliance {r.vm} ({r.id}) removed" + (" (powered off first)" if r.powered_off else "")
                ]

            self.start(f"remove {a.name}", call)

        question = (
            f"Remove appliance {a.vm} on {a.host or '?'}?\nIt is powered off and destroyed; its leases end."
        )
        self.push_screen(Confirm(question, yes="Remove"), go)

    # clients

    def action_register(self) -> None:
        values: dict[str, str] = {}
        c = self.clients.selected_client() if self._active() == "clients" else None
        if c is not None:
            values = {"vm": c.vm, "appliances": ", ".join(c.appliances), "client": c.client or ""}
        known = [a.name for a in self.snapshot.appliances] if self.snapshot else []

        def go(r: Registering | None) -> None:
            if r is None:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                reg = self.estate.register(r.vm, r.appliances, r.client_name, progress)
                names = ", ".join(a.name for a in reg.appliances)
                return [f"VM {reg.vm} registered as client {reg.client} with {names}", *reg.warnings]

            self.start(f"register {r.vm}", call)

        self.push_screen(RegisterForm(values, known), go)

    def action_unregister(self) -> None:
        c = self.clients.selected_client() if self._active() == "clients" else None
        if c is None:
            self.notify("choose a client VM in the Clients view (3) first", severity="warning")
            return

        def go(yes: bool | None) -> None:
            if not yes:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                u = self.estate.unregister(c.vm, False, progress)
                return [
                    f"VM {u.vm} unregistered; key revoked on {', '.join(u.revoked) or 'none'}",
                    *u.warnings,
                ]

            self.start(f"unregister {c.vm}", call)

        where = ", ".join(c.appliances) or "no appliance"
        question = f"Unregister {c.vm}?\nIts key is revoked on {where}, and its guestinfo cleared."
        self.push_screen(Confirm(question, yes="Unregister"), go)

    # keys

    def _known_appliances(self) -> list[str]:
        return [a.name for a in self.snapshot.appliances] if self.snapshot else []

    def action_enroll(self) -> None:
        a = self.appliances.selected_appliance() if self._active() == "appliances" else None
        values = {"appliance": a.name} if a is not None else {}

        def go(e: Enrolling | None) -> None:
            if e is None:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                done = self.estate.enroll(e.name, e.appliance, e.bundle)
                return [f"{done.name} enrolled on {e.appliance}: bundle {done.bundle} (0600: a secret key)"]

            self.start(f"enrol {e.name}", call)

        self.push_screen(EnrollForm(values, self._known_appliances()), go)

    def action_revoke(self) -> None:
        a = self.appliances.selected_appliance() if self._active() == "appliances" else None
        values = {"appliance": a.name} if a is not None else {}

        def go(r: dict[str, str] | None) -> None:
            if r is None:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                self.estate.revoke(r["name"], r["appliance"])
                return [f"{r['name']}'s key revoked on {r['appliance']}"]

            self.start(f"revoke {r['name']}", call)

        self.push_screen(RevokeForm(values, self._known_appliances()), go)

    # sessions

    def action_end_session(self) -> None:
        row = self.sessions.selected_session() if self._active() == "sessions" else None
        if row is None:
            self.notify("choose a session in the Sessions view (4) first", severity="warning")
            return
        if not row.session:
            self.notify(
                f"{row.appliance}'s radiumd does not list sessions (an older version): "
                "end it from the client, or upgrade the appliance",
                severity="warning",
            )
            return
        a = self.appliances.appliances.get(row.appliance)
        target = a.id if a is not None else row.appliance

        def go(yes: bool | None) -> None:
            if not yes:
                return

            def call(progress: vcenter.Progress) -> list[str]:
                return [self.estate.end_session(target, row.session).summary()]

            self.start(f"end session {row.session[:12]}", call)

        runs = "\n".join(f"  {vcenter.command_of(r, 60)}" for r in row.runs) or "  (no process)"
        question = (
            f"End {row.client}'s session {row.session[:12]} on {row.appliance}?\n"
            f"Its processes are killed (exit 137, the client is told why):\n{runs}\n"
            f"and its leases released: {', '.join(row.devices) or 'none'}."
        )
        self.push_screen(Confirm(question, yes="End session"), go)

    def _active(self) -> str:
        return self.tabs.active

    # --- the command palette ---------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for b in self.BINDINGS:
            if isinstance(b, Binding) and b.id and b.id not in ("quit",):
                name = b.id.replace(".", " ")
                yield SystemCommand(
                    name.capitalize(), f"{b.description} (key {b.key})", self._runner(b.action)
                )

    def _runner(self, action: str) -> Callable[[], Any]:
        return lambda: self.run_action(action)
