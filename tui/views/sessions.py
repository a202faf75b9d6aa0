"""Sessions: the live leases across all appliances (client, devices, share)."""

from __future__ import annotations

from radium import vcenter

from ..estate import Lease, leases_of
from .base import Row, TableView, mib


class SessionsView(TableView):
    COLUMNS = ("Appliance", "Lease", "Client", "Devices", "Share", "MiB")
    EMPTY = "asking the appliances for their leases..."

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.leases: dict[str, Lease] = {}

    def probed(self, probes: dict[str, vcenter.Probe]) -> None:
        leases = [lease for name, p in sorted(probes.items()) for lease in leases_of(name, p)]
        self.leases = {f"{lease.appliance}/{lease.lease_id}": lease for lease in leases}
        rows: list[Row] = [
            (
                key,
                (
                    lease.appliance,
                    lease.lease_id,
                    lease.client,
                    ", ".join(lease.devices),
                    "whole" if lease.share >= 1 else f"{lease.share:.2f}",
                    mib(lease.memory_bytes),
                ),
            )
            for key, lease in self.leases.items()
        ]
        self.set_summary(f"{len(rows)} live leases across {len(probes)} appliances")
        self.set_rows(rows)

    def selected_lease(self) -> Lease | None:
        key = self.selected_key()
        return self.leases.get(key) if key else None
