"""Enrolment: give a client a key pair and authorise it on an appliance.

Two ways to reach the appliance: on the appliance itself, through its radiumd
configuration file (the key is written into its clients folder, which radiumd
watches); or over the network, with an operator key that the appliance
already trusts (an `Enroll` request).  Either way the result is a client
bundle: a client configuration (keys and appliances) to install with
`radium configure --bundle FILE`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from ._config import (
    DEFAULT_PORT,
    ApplianceEntry,
    ClientConfig,
    ClientSection,
    load_client_config,
    load_daemon_config,
    load_toml,
)
from ._errors import ConfigError, UsageError
from ._keys import KeyDirectory, KeyPair, check_name, load_or_create_server_keys
from .client import api


def admin_config_path() -> Path:
    env = os.environ.get("RADIUM_ADMIN_CONFIG")
    if env:
        return Path(env)
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return home / "radium" / "admin.toml"


def _identity(name: str, from_bundle: Path | None) -> ClientConfig:
    """A fresh identity, or the one of an existing bundle (to add an appliance to it)."""
    if from_bundle is not None:
        bundle = load_toml(from_bundle, ClientConfig)
        if bundle.client.name != name:
            raise UsageError(f"{from_bundle} is the bundle of {bundle.client.name!r}, not {name!r}")
        return bundle
    pair = KeyPair.generate()
    assert pair.secret is not None
    return ClientConfig(client=ClientSection(name=name, public_key=pair.public, secret_key=pair.secret))


def _add_appliance(bundle: ClientConfig, entry: ApplianceEntry) -> ClientConfig:
    bundle.appliances = [a for a in bundle.appliances if a.name != entry.name] + [entry]
    return bundle


def public_address(listen: str) -> str:
    """What clients should dial for a listen address like tcp://0.0.0.0:7450."""
    host_port = listen.removeprefix("tcp://")
    host, _, port = host_port.rpartition(":")
    if host in ("0.0.0.0", "*", "[::]"):
        host = socket.getfqdn()
    return f"tcp://{host}:{port or DEFAULT_PORT}"


def enroll_local(
    daemon_config: Path,
    name: str,
    role: str = "client",
    address: str | None = None,
    from_bundle: Path | None = None,
) -> ClientConfig:
    """Enrol on the appliance whose radiumd configuration is `daemon_config`."""
    check_name(name, "client name")
    config = load_daemon_config(daemon_config)
    server_keys = load_or_create_server_keys(Path(config.server.state_dir), config.server.name)
    bundle = _identity(name, from_bundle)
    folder = Path(config.server.admins_dir if role == "admin" else config.server.clients_dir)
    KeyDirectory(folder, role).add(name, bundle.client.public_key)
    entry = ApplianceEntry(
        name=config.server.name,
        address=address or public_address(config.server.listen),
        public_key=server_keys.public,
    )
    return _add_appliance(bundle, entry)


def _find_appliance(admin: ClientConfig, ref: str) -> ApplianceEntry:
    for a in admin.appliances:
        if ref in (a.name, a.address):
            return a
    known = ", ".join(f"{a.name} ({a.address})" for a in admin.appliances) or "none"
    raise ConfigError(
        f"{admin.source} has no appliance {ref!r}; known: {known}. "
        "Enrol an operator key on that appliance first."
    )


def enroll_remote(ref: str, name: str, role: str = "client", from_bundle: Path | None = None) -> ClientConfig:
    """Enrol over the network, with the operator key of the admin configuration."""
    check_name(name, "client name")
    admin = load_client_config(admin_config_path())
    entry = _find_appliance(admin, ref)
    bundle = _identity(name, from_bundle)
    asyncio.run(api.enroll(admin, entry, name, bundle.client.public_key, role))
    return _add_appliance(bundle, entry)


def revoke_local(daemon_config: Path, name: str, role: str = "client") -> bool:
    check_name(name, "client name")
    config = load_daemon_config(daemon_config)
    folder = Path(config.server.admins_dir if role == "admin" else config.server.clients_dir)
    return KeyDirectory(folder, role).remove(name)


def revoke_remote(ref: str, name: str, role: str = "client") -> bool:
    check_name(name, "client name")
    admin = load_client_config(admin_config_path())
    asyncio.run(api.revoke(admin, _find_appliance(admin, ref), name, role))
    return True


def is_local_reference(ref: str) -> bool:
    """A path to a radiumd configuration, rather than an address or a name."""
    return not ref.startswith("tcp://") and Path(ref).is_file()
