"""Clients: the VMs registered as Radium clients, their appliances and power state."""

from __future__ import annotations

from radium import vcenter

from ..estate import Snapshot
from .base import Row, TableView


class ClientsView(TableView):
    COLUMNS = ("VM", "Client", "Host", "Power", "Appliances", "Public key")
    EMPTY = "reading the client VMs..."

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clients: dict[str, vcenter.ClientVM] = {}

    def show(self, snapshot: Snapshot) -> None:
        self.clients = {c.id: c for c in snapshot.clients}
        rows: list[Row] = [
            (
                c.id,
                (
                    c.vm,
                    c.client or "-",
                    c.host or "-",
                    c.power_state,
                    ", ".join(c.appliances) or "-",
                    (c.public_key or "")[:12] + ("..." if c.public_key else ""),
                ),
            )
            for c in snapshot.clients
        ]
        self.set_summary(
            f"{len(rows)} registered client VMs (r: register a VM, u: unregister the selected one)"
        )
        self.set_rows(rows)

    def selected_client(self) -> vcenter.ClientVM | None:
        key = self.selected_key()
        return self.clients.get(key) if key else None
