"""`?`: every key of the console, and what it does."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

INTRO = (
    "The estate of one vCenter, live: vCenter pushes its changes, the appliances are asked every few "
    "seconds. Choose a row, then press an action's key; forms check each field as you type. "
    "Ctrl+P opens the command palette. Escape or ? closes this."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="help.close")]

    def __init__(self, bindings: list[BindingType]) -> None:
        super().__init__()
        self.bindings = [b for b in bindings if isinstance(b, Binding)]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static("Keys", classes="title")
            yield Static(INTRO, classes="intro")
            table: DataTable[str] = DataTable(cursor_type="none", show_cursor=False)
            table.add_columns("Key", "Does")
            for b in self.bindings:
                table.add_row(b.key.replace("question_mark", "?").replace("slash", "/"), b.description)
            table.add_row("ctrl+p", "command palette: every action by name")
            yield table
