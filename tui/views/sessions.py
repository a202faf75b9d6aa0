"""Sessions: every client's session across the appliances: what it holds, what it runs, since when."""

from __future__ import annotations

import time

from rich.text import Text

from radium import vcenter

from ..estate import SessionRow, sessions_of
from .base import Row, TableView, count, mib


class SessionsView(TableView):
    COLUMNS = ("Appliance", "Session", "Client", "Devices", "Share", "MiB", "Runs", "Since")
    EMPTY = "asking the appliances for their sessions..."

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rows: dict[str, SessionRow] = {}

    def probed(self, probes: dict[str, vcenter.Probe]) -> None:
        found = [row for name, p in sorted(probes.items()) for row in sessions_of(name, p)]
        self.rows = {f"{r.appliance}/{r.session or r.devices[0]}/{i}": r for i, r in enumerate(found)}
        now = time.time()
        rows: list[Row] = [(key, _cells(r, now)) for key, r in self.rows.items()]
        runs = sum(len(r.runs) for r in found)
        self.set_summary(
            f"{count(len(found), 'session')} with {count(runs, 'carried process', 'carried processes')} "
            f"across {count(len(probes), 'appliance')}  (e: end the session under the cursor)"
        )
        self.set_rows(rows)

    def selected_session(self) -> SessionRow | None:
        key = self.selected_key()
        return self.rows.get(key) if key else None


def _cells(r: SessionRow, now: float) -> tuple[object, ...]:
    if r.runs:
        first = vcenter.command_of(r.runs[0], 40)
        runs: str | Text = first + (f" (+{len(r.runs) - 1})" if len(r.runs) > 1 else "")
    else:
        runs = Text("-", style="dim")
    if not r.devices:
        share = "-"
    else:
        share = "whole" if r.share >= 1 else f"{r.share:.2f}"
    return (
        r.appliance,
        r.session[:12] or Text("(lease only)", style="dim"),
        f"{r.client}@{r.host}" if r.host else r.client,
        ", ".join(r.devices) or "-",
        share,
        mib(r.memory_bytes) if r.devices else "-",
        runs,
        vcenter.age(now - r.opened_at) if r.opened_at is not None else "-",
    )
