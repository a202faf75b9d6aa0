"""Appliances: each appliance VM, its radiumd's health and version, its devices' load, leases and queue."""

from __future__ import annotations

from collections import deque

from rich.text import Text

from radium import vcenter

from ..estate import Snapshot
from .base import Row, TableView, mib, sparkline

HISTORY = 60  # samples of utilisation kept per device (one a probe: 5 s, so the last 5 minutes)


class AppliancesView(TableView):
    COLUMNS = (
        "Appliance",
        "Host",
        "Power",
        "Address",
        "radiumd",
        "Device",
        "MiB alloc / total",
        "Util",
        "Utilisation",
        "Leases",
        "Queue",
    )
    EMPTY = "reading the appliances..."

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.appliances: dict[str, vcenter.Appliance] = {}
        self.probes: dict[str, vcenter.Probe] = {}
        self.history: dict[tuple[str, str], deque[float | None]] = {}
        self._snapshot: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.appliances = {a.name: a for a in snapshot.appliances}
        self._show()

    def probed(self, probes: dict[str, vcenter.Probe]) -> None:
        self.probes.update(probes)
        for name, probe in probes.items():
            for st in probe.devices:
                h = self.history.setdefault((name, st.device.id), deque(maxlen=HISTORY))
                h.append(st.utilization_percent)
        self._show()

    def _show(self) -> None:
        rows: list[Row] = []
        healthy = 0
        for a in sorted(self.appliances.values(), key=lambda a: a.name):
            probe = self.probes.get(a.name)
            power = Text(a.power_state, style="green" if a.power_state == "poweredOn" else "dim")
            if probe is None:
                state = Text("asking...", style="dim")
            elif probe.health.reachable:
                state = Text(f"ok {probe.health.version or ''}".strip(), style="green")
            else:
                state = Text(probe.health.error or "unreachable", style="red")
            head = (a.name, a.host or "-", power, a.address or "-", state)
            if probe is None or not probe.devices:
                rows.append((a.name, (*head, "-", "", "", "", "", "")))
                continue
            healthy += probe.health.reachable
            for i, st in enumerate(probe.devices):
                d = st.device
                util = st.utilization_percent
                first = i == 0
                rows.append(
                    (
                        f"{a.name}/{d.id}",
                        (
                            *(head if first else ("", "", "", "", "")),
                            Text(f"{d.id} {d.model}", style="" if d.health == "ok" else "red"),
                            f"{mib(st.memory_allocated_bytes)} / {mib(d.memory_bytes)}",
                            "-" if util is None else f"{util:.0f}%",
                            sparkline(self.history.get((a.name, d.id), ())),
                            str(len(st.leases)),
                            str(probe.queue_length) if first else "",
                        ),
                    )
                )
        n = len(self.appliances)
        self.set_summary(
            f"{n} appliances, {healthy} answering (d: deploy, x: remove the selected one, k/K: enrol/revoke)"
        )
        self.set_rows(rows)

    def selected_appliance(self) -> vcenter.Appliance | None:
        key = self.selected_key()
        if key is None:
            return None
        return self.appliances.get(key.split("/", 1)[0])
