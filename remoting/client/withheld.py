"""The export policy of one user's runs (run/exports.py), from the client's configuration."""

from __future__ import annotations

import dataclasses
import os
import pwd
import time
import tomllib
from collections.abc import Mapping

from .._config import SYSTEM_CLIENT_CONFIG, ClientConfig, lab_profile_dir
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
    if config.source != system and os.path.exists(system):
        try:
            with open(system, "rb") as f:
                section = tomllib.load(f).get("exports", {})
        except (OSError, tomllib.TOMLDecodeError):
            section = {}  # not ours to read (0600, another user's), or broken: radium-admin says so
        deny += [(rule, system) for rule in section.get("deny", []) if isinstance(rule, str)]
        allow += [(rule, system) for rule in section.get("allow", []) if isinstance(rule, str)]
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
