"""The export policy of one user's runs (run/exports.py), from the client's configuration."""

from __future__ import annotations

import dataclasses
import os
import pwd
import time
from collections.abc import Mapping
from pathlib import Path

from .._config import (
    SYSTEM_CLIENT_CONFIG,
    ClientConfig,
    SystemExports,
    check_exports,
    lab_profile_dir,
    load_toml,
)
from .._errors import ConfigError
from ..run.exports import ExportPolicy
from .paths import state_dir

# Made once a minute at most per set of rules: learning the denied inodes walks the denied
# folders (~25 ms for the lab's state folder), too much for every run of the run agent.
REMAKE_AFTER = 60.0
_made: dict[tuple, tuple[float, ExportPolicy]] = {}


def export_policy(config: ClientConfig, environ: Mapping[str, str]) -> ExportPolicy:
    """The defaults; the [exports] rules of the configuration in use and of the operator's
    /etc/radium/client.toml; the client's own configuration and state always withheld."""
    homes = [environ.get("HOME", "")]
    try:
        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    deny = [(rule, config.source) for rule in config.exports.deny]
    allow = [(rule, config.source) for rule in config.exports.allow]
    system = str(SYSTEM_CLIENT_CONFIG)
    # The operator's rules apply to every configuration; a file they cannot be read from for a
    # mistake in it stops the run (its denials unknown), one kept from this user is not theirs.
    if config.source != system and os.access(system, os.R_OK):
        operator = load_toml(Path(system), SystemExports)
        check_exports(operator.exports, system)
        deny += [(rule, system) for rule in operator.exports.deny]
        allow += [(rule, system) for rule in operator.exports.allow]
    always = [p for p in (config.source, str(state_dir(environ)), str(lab_profile_dir(environ))) if p]
    key = (tuple(homes), tuple(deny), tuple(allow), tuple(always))
    now = time.monotonic()
    made = _made.get(key)
    if made is None or now - made[0] > REMAKE_AFTER:
        try:
            made = _made[key] = (now, ExportPolicy.make(homes, deny, allow, always))
        except ValueError as exc:
            raise ConfigError(f"[exports]: {exc}") from None
    # Each run resolves paths afresh (a folder may have become a symlink since): its own cache.
    return dataclasses.replace(made[1], _folders={})
