"""A view: a line of summary over a table whose rows come from the estate, filtered by `/`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Static

Row = tuple[str, Sequence[Any]]  # (key, cells)


class TableView(Vertical):
    """Rows rebuilt from the latest data; the cursor stays on the same row (by key) across updates."""

    COLUMNS: tuple[str, ...] = ()
    EMPTY = "nothing yet"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filter_text = ""
        self._rows: list[Row] = []

    def compose(self) -> ComposeResult:
        yield Static(self.EMPTY, classes="summary")
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True)
        table.add_columns(*self.COLUMNS)
        yield table

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one(DataTable)

    def set_summary(self, text: str | Text) -> None:
        try:
            summary = self.query_one(".summary", Static)
        except NoMatches:
            return  # the view is being taken apart (the console is closing)
        summary.update(text)

    def set_rows(self, rows: list[Row]) -> None:
        self._rows = rows
        self._render_rows()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self._render_rows()

    def visible_rows(self) -> list[Row]:
        """The rows the filter lets through (any cell containing it, case-insensitive)."""
        if not self.filter_text:
            return self._rows
        return [(k, cells) for k, cells in self._rows if self.filter_text in _plain(cells).lower()]

    def _render_rows(self) -> None:
        try:
            table = self.table
        except NoMatches:
            # The view is being taken apart (the console is closing) while a worker's message still
            # comes in (vCenter failing meanwhile): the rows are kept, there is nothing to draw on.
            return
        current = self.selected_key()
        scroll = table.scroll_y
        table.clear()
        for key, cells in self.visible_rows():
            table.add_row(*cells, key=key)
        if current is not None:
            try:
                table.move_cursor(row=table.get_row_index(current), animate=False, scroll=False)
            except Exception:  # noqa: BLE001 (the row is gone: the cursor stays where it is)
                pass
        table.scroll_y = scroll

    def selected_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        table = self.table
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 (no row there)
            return None


def _plain(cells: Sequence[Any]) -> str:
    return " ".join(c.plain if isinstance(c, Text) else str(c) for c in cells)


def yes_no(value: bool, yes: str = "yes", no: str = "no") -> Text:
    return Text(yes, style="green") if value else Text(no, style="dim")


def count(n: int, word: str, plural: str | None = None) -> str:
    """ "1 session", "2 sessions"."""
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def mib(n_bytes: int | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.0f}"


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = 12) -> str:
    """The last `width` percentages (0-100) as block characters; a gap where a value is unknown."""
    out = []
    for v in list(values)[-width:]:
        out.append(" " if v is None else SPARK[min(len(SPARK) - 1, int(max(0.0, v) / 100 * len(SPARK)))])
    return "".join(out).rjust(width)
