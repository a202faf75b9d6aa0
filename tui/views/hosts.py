"""Hosts: clusters and hosts, each accelerator with its passthrough state and the VM holding it."""

from __future__ import annotations

from rich.text import Text

from radium import vcenter

from ..estate import Snapshot
from .base import Row, TableView, yes_no


class HostsView(TableView):
    COLUMNS = (
        "Host",
        "Cluster",
        "State",
        "Device",
        "Vendor / model",
        "GiB",
        "Capable",
        "Enabled",
        "Active",
        "Held by",
    )
    EMPTY = "reading the hosts..."

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.devices: dict[str, tuple[vcenter.Host, vcenter.PassthroughDevice]] = {}

    def show(self, snapshot: Snapshot) -> None:
        rows: list[Row] = []
        self.devices = {}
        for h in snapshot.hosts:
            state = h.connection_state + (" (maintenance)" if h.maintenance_mode else "")
            if not h.accelerators:
                rows.append(
                    (
                        h.id,
                        (
                            h.name,
                            h.cluster or "-",
                            state,
                            "-",
                            Text("no accelerators", style="dim"),
                            "",
                            "",
                            "",
                            "",
                            "",
                        ),
                    )
                )
            for d in h.accelerators:
                key = f"{h.id}/{d.address}"
                self.devices[key] = (h, d)
                active = Text("reboot pending", style="yellow") if d.reboot_pending else yes_no(d.active)
                rows.append(
                    (
                        key,
                        (
                            h.name,
                            h.cluster or "-",
                            state,
                            d.address,
                            f"{d.vendor} {d.model}",
                            "?" if d.memory_gib is None else str(d.memory_gib),
                            yes_no(d.capable),
                            yes_no(d.enabled),
                            active,
                            d.held_by or "",
                        ),
                    )
                )
        free = snapshot.free_gpus()
        total = sum(len(h.accelerators) for h in snapshot.hosts)
        parts = ", ".join(f"{cluster} {n}" for cluster, n in sorted(free.items()))
        more = "  (reading more hosts from vCenter...)" if snapshot.reading == "hosts" else ""
        self.set_summary(
            f"{len(snapshot.hosts)} hosts, {total} accelerators; free for appliances: {parts or 'none'}{more}"
        )
        self.set_rows(rows)

    def selected_device(self) -> tuple[vcenter.Host, vcenter.PassthroughDevice] | None:
        key = self.selected_key()
        return self.devices.get(key) if key else None
