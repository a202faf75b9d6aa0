"""Where the client keeps its state: small enough for `radium run`'s quick start to import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """RADIUM_STATE_DIR, else $XDG_RUNTIME_DIR/radium, else ~/.local/state/radium."""
    env = os.environ if environ is None else environ
    if env.get("RADIUM_STATE_DIR"):
        return Path(env["RADIUM_STATE_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "radium"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "radium"
