"""vCenter passwords in the system keyring, through the optional `keyring` library.

Nothing here writes a password anywhere else.  Without `keyring` installed (it is
the optional extra ``radium[keyring]``), lookups find nothing and storing fails
with a `UsageError` saying what to install.
"""

from __future__ import annotations

from typing import Any

from radium.remoting import UsageError

__all__ = ["SERVICE", "available", "delete_password", "get_password", "require", "set_password"]

#: Keyring service name prefix; the entry for a vCenter is ``SERVICE + ":" + url``, user name as key.
SERVICE = "radium-vcenter"


def _keyring() -> Any | None:
    try:
        import keyring
    except ImportError:
        return None
    return keyring


def available() -> bool:
    """Whether the `keyring` library can be imported."""
    return _keyring() is not None


def _service(url: str) -> str:
    return f"{SERVICE}:{url}"


def get_password(url: str, user: str) -> str | None:
    """The password stored for `user` at `url`, or None (also when no keyring is usable)."""
    kr = _keyring()
    if kr is None:
        return None
    try:
        return kr.get_password(_service(url), user)
    except Exception:  # a keyring backend that is not set up is no password, not a crash
        return None


def require() -> Any:
    """The `keyring` module, or a `UsageError` saying what to install."""
    kr = _keyring()
    if kr is None:
        raise UsageError(
            "storing the password needs the `keyring` library: pip install 'radium[keyring]' "
            "(or give the password at each use: --password-stdin, RADIUM_VCENTER_PASSWORD or the prompt)"
        )
    return kr


def set_password(url: str, user: str, password: str) -> None:
    """Store the password of `user` at `url` in the system keyring."""
    kr = require()
    try:
        kr.set_password(_service(url), user, password)
    except Exception as exc:
        raise UsageError(f"the system keyring refused the password: {exc}") from None


def delete_password(url: str, user: str) -> bool:
    """Remove a stored password; whether there was one."""
    kr = _keyring()
    if kr is None:
        return False
    try:
        kr.delete_password(_service(url), user)
    except Exception:
        return False
    return True
