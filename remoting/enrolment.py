"""Enrolment: give a client a key pair and authorise it on an appliance.

Two ways to reach the appliance: on the appliance itself, through its radiumd
configuration file (the key is written into its clients folder, which radiumd
watches); or over the network, with an operator key that the appliance
already trusts (an `Enroll` request).  Either way the result is a client
bundle: a client configuration (keys and appliances) to install with
`radium configure --bundle FILE`.

The operator actions `enroll` and `revoke` (what `radium-admin enroll|revoke`,
the console and Ansible call) choose the way from the reference they are given:

    done = enroll("vm1", "/etc/radium/radiumd.toml")     # or an appliance name/address: with the operator key
    print(done.bundle, done.summary())                   # the bundle file (0600), and what --json shows
    revoke("vm1", "gpu1")

One identity on several appliances, without a bundle file in between
(what `radium-admin register-vm` does):

    admin = load_admin_config()
    bundle = enroll_many(admin, [find_appliance(admin, r) for r in ("gpu1", "gpu2")], new_identity("vm1"))
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ._config import (
    DEFAULT_PORT,
    ApplianceEntry,
    ClientConfig,
    ClientSection,
    lab_profile_dir,
    load_client_config,
    load_daemon_config,
    load_toml,
    save_client_config,
)
from ._errors import AuthError, ConfigError, RadiumError, UsageError
from ._keys import KeyDirectory, KeyPair, check_name, load_or_create_server_keys
from .client import api

__all__ = [
    "ROLES",
    "Enrolment",
    "Revocation",
    "admin_config_path",
    "enroll",
    "enroll_local",
    "enroll_many",
    "enroll_remote",
    "find_appliance",
    "forget_appliance",
    "is_local_reference",
    "load_admin_config",
    "new_identity",
    "operator_identity",
    "public_address",
    "record_appliance",
    "revoke",
    "revoke_local",
    "revoke_many",
    "revoke_remote",
]

#: Who a key is enrolled as: a client (runs work) or an operator (enrols and revokes keys).
ROLES = ("client", "admin")


def admin_config_path() -> Path:
    """Where the operator's configuration is.

    RADIUM_ADMIN_CONFIG, then ~/.config/radium/admin.toml, then the lab's operator
    key (`radium-admin lab up`) when nothing else exists, as the client falls back
    to the lab's client.toml.
    """
    env = os.environ.get("RADIUM_ADMIN_CONFIG")
    if env:
        return Path(env)
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = home / "radium" / "admin.toml"
    if user.exists():
        return user
    lab = lab_profile_dir() / "admin.toml"
    return lab if lab.exists() else user


def load_admin_config() -> ClientConfig:
    """The operator's configuration: an operator key and the appliances it is trusted on."""
    path = admin_config_path()
    if not path.exists():
        raise ConfigError(
            f"{path}: no operator configuration. Enrol an operator key on an appliance "
            "(there: radium-admin enroll ops --role admin --appliance /etc/radium/radiumd.toml -o ops.toml) "
            "and point RADIUM_ADMIN_CONFIG at that bundle",
            file=str(path),
        )
    return load_client_config(path)


def operator_identity(name: str = "operator") -> tuple[ClientConfig, Path, bool]:
    """The operator configuration in effect (`admin_config_path`), or a new operator identity
    called `name` for that path, not written yet; whether it is new."""
    path = admin_config_path()
    if path.exists():
        return load_client_config(path), path, False
    return new_identity(name), path, True


def record_appliance(path: Path, entry: ApplianceEntry) -> bool:
    """Add (or update) an appliance in the operator configuration at `path`; whether it changed.

    False also when there is no configuration there that can be read (nothing to record in).
    """
    try:
        config = load_client_config(path)
    except RadiumError:
        return False
    if entry in config.appliances:
        return False
    save_client_config(_add_appliance(config, entry), path)
    return True


def forget_appliance(name: str, path: Path | None = None) -> str | None:
    """Drop appliance `name` from the operator configuration; the file it was dropped from, or None."""
    path = path or admin_config_path()
    if not path.exists():
        return None
    try:
        config = load_client_config(path)
    except RadiumError:
        return None
    kept = [a for a in config.appliances if a.name != name]
    if len(kept) == len(config.appliances):
        return None
    config.appliances = kept
    save_client_config(config, path)
    return str(path)


def new_identity(name: str) -> ClientConfig:
    """A fresh key pair for client `name`, with no appliances yet."""
    check_name(name, "client name")
    pair = KeyPair.generate()
    assert pair.secret is not None
    return ClientConfig(client=ClientSection(name=name, public_key=pair.public, secret_key=pair.secret))


def _identity(name: str, from_bundle: Path | None) -> ClientConfig:
    """A fresh identity, or the one of an existing bundle (to add an appliance to it)."""
    if from_bundle is not None:
        bundle = load_toml(from_bundle, ClientConfig)
        if bundle.client.name != name:
            raise UsageError(f"{from_bundle} is the bundle of {bundle.client.name!r}, not {name!r}")
        return bundle
    return new_identity(name)


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


def find_appliance(admin: ClientConfig, ref: str) -> ApplianceEntry:
    """The appliance of the operator configuration called `ref` (its name or its address)."""
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
    admin = load_admin_config()
    entry = find_appliance(admin, ref)
    bundle = _identity(name, from_bundle)
    return enroll_many(admin, [entry], bundle, role)


def _combined(what: str, failures: list[tuple[ApplianceEntry, RadiumError]]) -> RadiumError:
    """One error for failures on several appliances, of the first one's kind."""
    if len(failures) == 1:
        return failures[0][1]
    lines = "; ".join(f"{a.name}: {e.message}" for a, e in failures)
    return type(failures[0][1])(f"{what} failed on {len(failures)} appliances: {lines}")


def enroll_many(
    admin: ClientConfig, appliances: list[ApplianceEntry], bundle: ClientConfig, role: str = "client"
) -> ClientConfig:
    """Authorise the key of `bundle` on each appliance (all at once, with the operator key).

    Returns `bundle` with those appliances added.  Enrolling a name again replaces
    its key there, so this is safe to repeat.  Raises the appliances' errors,
    combined into one, when any failed (the others keep the key).
    """
    name, public = bundle.client.name, bundle.client.public_key
    check_name(name, "client name")

    async def each() -> list[RadiumError | None]:
        async def one(entry: ApplianceEntry) -> RadiumError | None:
            try:
                await api.enroll(admin, entry, name, public, role)
            except RadiumError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(a) for a in appliances)))

    errors = asyncio.run(each())
    failures = [(a, e) for a, e in zip(appliances, errors, strict=True) if e is not None]
    if failures:
        raise _combined(f"enrolling {name}", failures)
    for entry in appliances:
        _add_appliance(bundle, entry)
    return bundle


def revoke_many(
    admin: ClientConfig, appliances: list[ApplianceEntry], name: str, role: str = "client"
) -> dict[str, RadiumError | None]:
    """Remove client `name` from each appliance (all at once); appliance name → its error, or None.

    An appliance where `name` was not enrolled counts as done (None).
    """
    check_name(name, "client name")

    async def each() -> list[RadiumError | None]:
        async def one(entry: ApplianceEntry) -> RadiumError | None:
            try:
                await api.revoke(admin, entry, name, role)
            except UsageError as exc:
                if "is enrolled on" in exc.message:  # "no client named 'x' is enrolled on gpu1"
                    return None
                return exc
            except RadiumError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(a) for a in appliances)))

    return {a.name: e for a, e in zip(appliances, asyncio.run(each()), strict=True)}


def revoke_local(daemon_config: Path, name: str, role: str = "client") -> bool:
    check_name(name, "client name")
    config = load_daemon_config(daemon_config)
    folder = Path(config.server.admins_dir if role == "admin" else config.server.clients_dir)
    return KeyDirectory(folder, role).remove(name)


def revoke_remote(ref: str, name: str, role: str = "client") -> bool:
    check_name(name, "client name")
    admin = load_admin_config()
    asyncio.run(api.revoke(admin, find_appliance(admin, ref), name, role))
    return True


def is_local_reference(ref: str) -> bool:
    """A path to a radiumd configuration, rather than an address or a name."""
    return not ref.startswith("tcp://") and Path(ref).is_file()


# --- the operator actions -------------------------------------------------------


@dataclass
class Enrolment:
    """What `enroll` did.  `summary()` is what a face shows (never the secret key)."""

    name: str
    role: str
    bundle: Path  #: the bundle file written (0600)
    config: ClientConfig  #: its content: the key pair (secret included) and the appliances
    how: str  #: where and how the key was authorised, in words

    @property
    def appliance(self) -> ApplianceEntry:
        """The appliance enrolled on (the bundle's last)."""
        return self.config.appliances[-1]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "bundle": str(self.bundle),
            "public_key": self.config.client.public_key,
            "appliance": self.appliance.name,
            "address": self.appliance.address,
        }


class Revocation(msgspec.Struct, kw_only=True):
    """What `revoke` did."""

    name: str
    revoked: bool


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def enroll(
    name: str,
    appliance: str,
    *,
    role: str = "client",
    address: str | None = None,
    from_bundle: Path | None = None,
    output: Path | None = None,
) -> Enrolment:
    """Authorise a key for `name` on `appliance` and write its bundle (`output`, default NAME.radium.toml).

    `appliance` is a radiumd configuration file on this machine (the key goes into
    its clients folder; `address` is what clients dial, by default from its listen
    address), or an appliance's name or address in the operator configuration
    (the key is enrolled over the network with the operator key).  `from_bundle`
    reuses that bundle's key pair and adds the appliance to it.
    """
    check_name(name, "client name")
    _check_role(role)
    if is_local_reference(appliance):
        bundle = enroll_local(Path(appliance), name, role, address, from_bundle)
        how = f"authorised in the clients folder of {appliance}"
    else:
        if address:
            raise UsageError("--address applies only when enrolling through a radiumd config file")
        bundle = enroll_remote(appliance, name, role, from_bundle)
        how = f"authorised on {appliance} with the operator key"
    path = Path(output) if output is not None else Path(f"{name}.radium.toml")
    save_client_config(bundle, path)  # 0600: it holds the secret key
    return Enrolment(name=name, role=role, bundle=path, config=bundle, how=how)


def is_enrolled(
    name: str, appliance: str, *, bundle: Path | None = None, role: str = "client"
) -> bool | None:
    """Whether `appliance` authorises `name`: in its keys folder (a radiumd configuration here: with the
    key of `bundle` when given), or, over the network, whether it accepts the key of `bundle` (an
    appliance's name or address).  None when that cannot be known: over the network without the
    client's bundle (radiumd does not list its keys).

    What makes enrolling and revoking idempotent for Ansible's `client_key`.
    """
    _check_role(role)
    check_name(name, "client name")
    mine = load_client_config(bundle) if bundle is not None and Path(bundle).exists() else None
    if is_local_reference(appliance):
        config = load_daemon_config(Path(appliance))
        folder = Path(config.server.admins_dir if role == "admin" else config.server.clients_dir)
        known = KeyDirectory(folder, role).names()
        return name in known and (mine is None or known[name] == mine.client.public_key)
    if mine is None:
        return None
    if mine.client.name != name:
        return False
    entry = next((a for a in mine.appliances if appliance in (a.name, a.address)), None)
    if entry is None:
        return False
    single = ClientConfig(client=mine.client, appliances=[entry], source=mine.source)
    [answer] = asyncio.run(api.check_health(single, timeout=5.0))
    if isinstance(answer.error, AuthError):
        return False
    if answer.error is not None:
        raise answer.error
    return True


def revoke(name: str, appliance: str, *, role: str = "client") -> Revocation:
    """Remove the key of `name` from `appliance` (a radiumd configuration here, or a name/address)."""
    _check_role(role)
    if is_local_reference(appliance):
        if not revoke_local(Path(appliance), name, role):
            raise UsageError(f"no {role} named {name!r} is enrolled in {appliance}")
    else:
        revoke_remote(appliance, name, role)
    return Revocation(name=name, revoked=True)
