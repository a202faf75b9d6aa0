"""Where the client keeps its state (the rule itself is handoff.state_dir: `radium run`'s
quick start must not import pathlib)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from . import handoff


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """RADIUM_STATE_DIR, else $XDG_RUNTIME_DIR/radium, else ~/.local/state/radium."""
    return Path(handoff.state_dir(os.environ if environ is None else environ))
