"""Saved vCenter connections as operator actions: `save_profile` (pinning, the keyring) and `remove_profile`.

The file they keep (``~/.config/radium/vcenter.toml``, 0600, never a password)
is read and written by `radium.vcenter.settings`; these are the steps around it
that `radium-admin profile save|remove`, the console and Ansible share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from radium.remoting import UsageError

from . import secrets
from .connection import check_server, server_thumbprint
from .settings import ConnectionSettings, Profile, delete_profile, load_profiles, write_profile

__all__ = ["RemovedProfile", "SavedProfile", "check_keyring", "remove_profile", "save_profile"]


@dataclass
class SavedProfile:
    """What `save_profile` saved.  `summary()` is what a face shows as data."""

    name: str
    path: Path
    default: bool  #: it is the default profile now
    profile: Profile
    warnings: list[str] = field(default_factory=list)

    @property
    def trust(self) -> str:
        """How the server's certificate is checked, in words."""
        p = self.profile
        if p.thumbprint:
            return f"pinned SHA-256 {p.thumbprint}"
        if p.insecure:
            return "not verified (--insecure)"
        return f"CA {p.ca}" if p.ca else "system CAs"

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "file": str(self.path), "default": self.default, "profile": self.profile}


class RemovedProfile(msgspec.Struct, kw_only=True):
    removed: str  #: the profile's name
    keyring_entry_removed: bool  #: its password was in the system keyring and is gone from it


def check_keyring() -> None:
    """Refuse at once when passwords cannot be stored: call it before asking for one to store."""
    secrets.require()


def save_profile(
    name: str,
    settings: ConnectionSettings,
    *,
    pin: bool = False,
    keyring: bool = False,
    default: bool = False,
) -> SavedProfile:
    """Save `settings` (URL, user, how to trust the server) as profile `name`; never the password.

    `pin` connects now and pins the SHA-256 thumbprint the server presents
    (verified against ``settings.ca`` first when one is given; otherwise the
    result warns that it was pinned unverified).  `keyring` stores
    ``settings.password`` in the system keyring.  `default` makes it the default
    profile (the first one saved is, too).
    """
    if keyring:
        check_keyring()
        if not settings.password:
            raise UsageError("--keyring: there is no password to store (give one with --password-stdin)")
    warnings = []
    pinned = None
    if pin:
        if settings.thumbprint:
            raise UsageError(
                "--pin pins the thumbprint the server presents; do not give one with --thumbprint"
            )
        if settings.insecure:
            raise UsageError("--pin and --insecure contradict each other")
        if settings.ca:
            pinned = check_server(settings)  # verified by the CA, then pinned
        else:
            pinned = server_thumbprint(settings)
            warnings.append(
                f"pinned the thumbprint {settings.host}:{settings.port} presents now, unverified: {pinned}; "
                "check it against the vCenter's certificate"
            )
    profile = Profile(
        url=settings.url,
        user=settings.user,
        thumbprint=pinned or settings.thumbprint or "",
        ca=str(settings.ca.resolve()) if settings.ca and not pinned else "",
        insecure=settings.insecure,
        keyring=keyring,
    )
    if keyring:
        assert settings.password is not None
        secrets.set_password(settings.url, settings.user, settings.password)
    path = write_profile(name, profile, default=default)
    is_default = load_profiles(path).default == name
    return SavedProfile(name=name, path=path, default=is_default, profile=profile, warnings=warnings)


def remove_profile(name: str) -> RemovedProfile:
    """Remove profile `name`, and its password from the system keyring when it was kept there."""
    removed = delete_profile(name)
    forgot = secrets.delete_password(removed.url, removed.user) if removed.keyring else False
    return RemovedProfile(removed=name, keyring_entry_removed=forgot)
