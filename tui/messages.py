"""The console's app-wide messages: what its workers tell the screen (posted from threads)."""

from __future__ import annotations

from textual.message import Message

from radium import vcenter

from .estate import Snapshot


class EstateRead(Message):
    """A read of vCenter ended: what it found, or None when it failed (a `Problem` says why); or, on the
    first read, a part of it (`snapshot.complete` False); `retry_in`: a failed read is tried again then."""

    def __init__(self, snapshot: Snapshot | None, retry_in: float | None = None) -> None:
        super().__init__()
        self.snapshot, self.retry_in = snapshot, retry_in


class EstateChanged(Message):
    """vCenter pushed a change: read what it touched again (the watcher keeps the union of what the
    changes not yet read touched); None: anything may have changed (the watch was down), read all."""

    def __init__(self, touched: vcenter.Touched | None) -> None:
        super().__init__()
        self.touched = touched

    def can_replace(self, message: Message) -> bool:  # a flood of changes is one re-read
        return isinstance(message, EstateChanged)


class Probed(Message):
    """What the appliances' radiumd answered, by appliance name."""

    def __init__(self, probes: dict[str, vcenter.Probe]) -> None:
        super().__init__()
        self.probes = probes


class Problem(Message):
    """A part (vCenter, an appliance) cannot be reached or answers errors: a banner says so."""

    def __init__(self, source: str, text: str, retry_in: float | None = None) -> None:
        super().__init__()
        self.source, self.text, self.retry_in = source, text, retry_in


class Recovered(Message):
    """A part that had a problem answers again."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source


class Progressed(Message):
    """A progress event of a running action (a step, a vCenter task's percent, bytes uploaded)."""

    def __init__(self, action: str, event: vcenter.ProgressEvent) -> None:
        super().__init__()
        self.action, self.event = action, event


class ActionDone(Message):
    """An action ended: what it did (lines), or why it failed."""

    def __init__(self, action: str, ok: bool, lines: list[str]) -> None:
        super().__init__()
        self.action, self.ok, self.lines = action, ok, lines
