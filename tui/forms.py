"""The console's forms and confirmations: modal screens that return what the operator chose.

Each field is checked as it is typed, with the library's own rules
(`DeployRequest.problems`, `check_name`): the form says what is wrong under the
field, and its button stays disabled until nothing is.  Escape cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from radium import vcenter
from radium.remoting import RadiumError, check_name

__all__ = ["Confirm", "DeployForm", "EnrollForm", "Enrolling", "RegisterForm", "Registering", "RevokeForm"]


class Confirm(ModalScreen[bool]):
    """A question with yes and no (y / n, Escape is no)."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class Form(ModalScreen[Any]):
    """Labelled inputs, a line of problems under each, and a submit button enabled when there are none."""

    TITLE = ""
    SUBMIT = "OK"
    FIELDS: tuple[tuple[str, str, str], ...] = ()  # (id, label, placeholder)
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="form.cancel")]

    def __init__(self, values: dict[str, str] | None = None) -> None:
        super().__init__()
        self.initial = values or {}
        self.touched: set[str] = {k for k, v in self.initial.items() if v}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form"):
            yield Static(self.TITLE, classes="title")
            with VerticalScroll():
                for fid, label, placeholder in self.FIELDS:
                    yield Label(label, classes="label")
                    yield Input(self.initial.get(fid, ""), placeholder=placeholder, id=fid, compact=True)
                    yield Static("", id=f"{fid}-problem", classes="problem")
            yield Static("", id="form-problem", classes="problem")
            with Horizontal(classes="buttons"):
                yield Button(self.SUBMIT, variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.check()

    def values(self) -> dict[str, str]:
        return {fid: self.query_one(f"#{fid}", Input).value.strip() for fid, _, _ in self.FIELDS}

    def problems(self, values: dict[str, str]) -> dict[str, str]:
        """{field id: what is wrong}; "" as a key for a problem of the whole form."""
        return {}

    def result(self, values: dict[str, str]) -> Any:
        return values

    def check(self, everything: bool = False) -> dict[str, str]:
        """Show the problems of the fields typed in (all of them when `everything`); the button waits."""
        found = self.problems(self.values())
        shown = {fid for fid, _, _ in self.FIELDS if everything or fid in self.touched}
        for fid, _, _ in self.FIELDS:
            self.query_one(f"#{fid}-problem", Static).update(found.get(fid, "") if fid in shown else "")
            self.query_one(f"#{fid}", Input).set_class(fid in found and fid in shown, "-invalid")
        rest = [fid for fid in found if fid and fid not in shown]
        whole = found.get("", "") or (f"still to fill in: {', '.join(rest)}" if rest else "")
        self.query_one("#form-problem", Static).update(whole)
        self.query_one("#submit", Button).disabled = bool(found)
        return found

    @on(Input.Changed)
    def changed(self, event: Input.Changed) -> None:
        if event.input.id:
            self.touched.add(event.input.id)
        self.check()

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.submit()

    @on(Button.Pressed, "#submit")
    def submit(self) -> None:
        if not self.check(everything=True):
            self.dismiss(self.result(self.values()))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


def _name_problem(text: str, what: str) -> str | None:
    try:
        check_name(text, what)
    except RadiumError as exc:
        return exc.message
    return None


class DeployForm(Form):
    """An appliance to deploy: `vcenter.DeployRequest`, checked by its own rules as you type."""

    TITLE = "Deploy an appliance"
    SUBMIT = "Deploy"
    FIELDS = (
        ("name", "Name (the VM's, radiumd's and the guest's host name)", "gpu1"),
        ("host", "ESXi host", "esx1"),
        ("gpus", "GPUs: all, or PCI addresses separated by commas", "all"),
        ("package", "Package: a .ova, or a .ovf with its files", "radium-appliance.ova"),
        ("network", "Port group (empty: as the OVF names it, else the host's first)", ""),
        ("ip", "Address: dhcp, or ADDR/PREFIX", "dhcp"),
        ("gateway", "Gateway (with a static address)", ""),
        ("dns", "DNS servers, separated by commas", ""),
        ("port", "radiumd's port", "7450"),
        ("wait", "Seconds to wait for its address and radiumd (0: do not wait)", "600"),
    )

    def __init__(self, values: dict[str, str] | None = None, hosts: list[str] | None = None) -> None:
        defaults = {"gpus": "all", "ip": "dhcp", "port": "7450", "wait": f"{vcenter.DEFAULT_TIMEOUT:g}"}
        super().__init__({**defaults, **(values or {})})
        self.hosts = hosts or []

    def request(self, v: dict[str, str]) -> vcenter.DeployRequest:
        return vcenter.DeployRequest(
            name=v["name"],
            host=v["host"],
            package=Path(v["package"]),
            gpus=v["gpus"] or "all",
            network=v["network"] or None,
            ip=v["ip"] or "dhcp",
            gateway=v["gateway"] or None,
            dns=v["dns"] or None,
            port=int(v["port"]) if v["port"].isdigit() else 0,
            wait=v["wait"] not in ("0", ""),
            timeout=float(v["wait"]) if v["wait"].isdigit() and v["wait"] != "0" else vcenter.DEFAULT_TIMEOUT,
        )

    def problems(self, values: dict[str, str]) -> dict[str, str]:
        found = self.request(values).problems()
        if not values["port"].isdigit():
            found["port"] = "a port number, 1-65535"
        if not values["wait"].isdigit():
            found["wait"] = "a whole number of seconds (0: do not wait)"
        if not values["host"]:
            found["host"] = "which host's GPUs the appliance gets"
        elif self.hosts and values["host"] not in self.hosts:
            found["host"] = f"no host {values['host']!r} in this vCenter"
        package = values["package"]
        if not package:
            found["package"] = "the appliance package: a .ova, or a .ovf with its files"
        elif not Path(package).expanduser().exists():
            found["package"] = f"{package}: no such file or folder"
        elif package and Path(package).suffix.lower() not in (".ova", ".ovf", ""):
            found["package"] = f"{package}: expected a .ova, a .ovf, or a package folder"
        return found

    def result(self, values: dict[str, str]) -> vcenter.DeployRequest:
        r = self.request(values)
        r.package = r.package.expanduser()
        return r


@dataclass(frozen=True)
class Registering:
    vm: str
    appliances: list[str]
    client_name: str | None


class RegisterForm(Form):
    """A VM to register with appliances (as `radium-admin register-vm`)."""

    TITLE = "Register a client VM"
    SUBMIT = "Register"
    FIELDS = (
        ("vm", "VM (name or managed object id)", "vm7"),
        ("appliances", "Appliances, separated by commas (exactly these: its key is revoked on others)", ""),
        ("client", "Client name on the appliances (empty: kept, else the VM's)", ""),
    )

    def __init__(self, values: dict[str, str] | None = None, appliances: list[str] | None = None) -> None:
        super().__init__(values)
        self.known = appliances or []

    def problems(self, values: dict[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        if not values["vm"]:
            found["vm"] = "which VM"
        names = [n.strip() for n in values["appliances"].split(",") if n.strip()]
        unknown = [n for n in names if self.known and n not in self.known]
        if not names:
            found["appliances"] = "at least one appliance" + (
                f": {', '.join(self.known)}" if self.known else ""
            )
        elif unknown:
            found["appliances"] = (
                f"not an appliance here: {', '.join(unknown)} (known: {', '.join(self.known)})"
            )
        if values["client"] and (why := _name_problem(values["client"], "client name")):
            found["client"] = why
        return found

    def result(self, values: dict[str, str]) -> Registering:
        names = [n.strip() for n in values["appliances"].split(",") if n.strip()]
        return Registering(values["vm"], names, values["client"] or None)


@dataclass(frozen=True)
class Enrolling:
    name: str
    appliance: str
    bundle: Path


class RevokeForm(Form):
    """A client key to revoke on an appliance (as `radium-admin revoke`)."""

    TITLE = "Revoke a client key"
    SUBMIT = "Revoke"
    FIELDS: tuple[tuple[str, str, str], ...] = (
        ("name", "Client name", ""),
        ("appliance", "Appliance (name or address in the operator configuration)", ""),
    )

    def __init__(self, values: dict[str, str] | None = None, appliances: list[str] | None = None) -> None:
        super().__init__(values)
        self.known = appliances or []

    def problems(self, values: dict[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        if why := _name_problem(values["name"], "client name"):
            found["name"] = why
        if not values["appliance"]:
            found["appliance"] = "which appliance" + (f": {', '.join(self.known)}" if self.known else "")
        return found


class EnrollForm(RevokeForm):
    """A client key to enrol on an appliance, for a machine outside vCenter (as `radium-admin enroll`)."""

    TITLE = "Enrol a client key"
    SUBMIT = "Enrol"
    FIELDS = (*RevokeForm.FIELDS, ("bundle", "Write its bundle (secret key, 0600) to", ""))

    def problems(self, values: dict[str, str]) -> dict[str, str]:
        found = super().problems(values)
        bundle = values["bundle"] or f"{values['name']}.radium.toml"
        parent = Path(bundle).expanduser().parent
        if not parent.is_dir():
            found["bundle"] = f"{parent}: no such folder"
        return found

    def result(self, values: dict[str, str]) -> Enrolling:
        bundle = Path(values["bundle"] or f"{values['name']}.radium.toml").expanduser()
        return Enrolling(values["name"], values["appliance"], bundle)
