"""Log: what the console did, and what vCenter and the appliances answered, newest first."""

from __future__ import annotations

import time

from rich.text import Text

from .base import TableView

STYLES = {"error": "red", "warning": "yellow", "ok": "green", "info": ""}


class LogView(TableView):
    COLUMNS = ("Time", "Source", "What")
    EMPTY = "what the console does, and what it is told, newest first"
    LIMIT = 1000

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.entries: list[tuple[float, str, str, str]] = []  # (time, source, text, level)
        self._seq = 0

    def on_mount(self) -> None:
        self.set_summary(self.EMPTY)
        self._show()

    def add(self, source: str, text: str, level: str = "info") -> None:
        self.entries.insert(0, (time.time(), source, text, level))
        del self.entries[self.LIMIT :]
        self._seq += 1
        if self.is_mounted:
            self._show()

    def _show(self) -> None:
        self.set_rows(
            [
                (
                    f"{self._seq - i}",
                    (time.strftime("%H:%M:%S", time.localtime(t)), source, Text(text, style=STYLES[lvl])),
                )
                for i, (t, source, text, lvl) in enumerate(self.entries)
            ]
        )
