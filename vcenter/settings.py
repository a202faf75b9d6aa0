"""Where a vCenter connection's settings come from: flags, the environment, a saved profile.

Precedence, field by field: explicit values (the command's flags) over the
environment over the profile.  The TLS choice (`thumbprint`, `ca`, `insecure`)
is taken whole from the first of those levels that sets any of it.  The profile
is the one named by `--profile` or ``RADIUM_VCENTER_PROFILE``, else the default
profile when neither flags nor environment name a URL.

Every ``RADIUM_VCENTER_*`` environment variable is read here and nowhere else
(`environment()`).  Profiles live in ``~/.config/radium/vcenter.toml`` (under
``$XDG_CONFIG_HOME`` when set), written 0600, and never hold a password: the
password comes from the caller (``--password-stdin``), ``RADIUM_VCENTER_PASSWORD``,
the system keyring (`radium.vcenter.secrets`), or a prompt on a terminal; a
profile may name a ``password_file`` instead (0600, owned by the reader: what the
lab writes for its simulator, or a secrets mount in automation).

When that file does not exist, the lab's profiles (``vcenter.toml`` in the lab's
folder, written by `radium-admin lab up` for its vCenter simulator) are read
instead, as `radium` falls back to the lab's client.toml (`active_profiles_path`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from radium.remoting import (
    ConfigError,
    Section,
    UsageError,
    dump_toml,
    explain_validation,
    load_toml,
    write_atomic,
)

from . import secrets

__all__ = [
    "CONNECT_TIMEOUT",
    "ENV",
    "ConnectionSettings",
    "Profile",
    "ProfileFile",
    "active_profiles_path",
    "lab_profiles_path",
    "environment",
    "format_thumbprint",
    "load_profiles",
    "normalize_url",
    "parse_thumbprint",
    "profiles_path",
    "delete_profile",
    "resolve",
    "write_profile",
]

#: The environment variables, by setting.
ENV = {
    "url": "RADIUM_VCENTER_URL",
    "user": "RADIUM_VCENTER_USER",
    "password": "RADIUM_VCENTER_PASSWORD",
    "thumbprint": "RADIUM_VCENTER_THUMBPRINT",
    "ca": "RADIUM_VCENTER_CA",
    "insecure": "RADIUM_VCENTER_INSECURE",
    "profile": "RADIUM_VCENTER_PROFILE",
}

#: Seconds to wait for the TCP connection and TLS handshake before calling vCenter unreachable.
CONNECT_TIMEOUT = 8.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


# --- profiles ----------------------------------------------------------------------


class Profile(Section, omit_defaults=True):  # type: ignore[call-arg]
    """A saved connection: where, who, and how to trust the server; never the password."""

    url: str
    user: str = ""
    thumbprint: str = ""  # SHA-256, AA:BB:... form
    ca: str = ""  # CA bundle (PEM) file
    insecure: bool = False
    keyring: bool = False  # a password for (url, user) was stored in the system keyring
    password_file: str = ""  # a file (0600, ours) holding the password: the lab's simulator, secret mounts


class ProfileFile(Section, omit_defaults=True):  # type: ignore[call-arg]
    default: str = ""
    profiles: dict[str, Profile] = msgspec.field(default_factory=dict)
    source: str = ""


class _RawProfileFile(Section):
    default: str = ""
    profiles: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    source: str = ""


def profiles_path() -> Path:
    """``$XDG_CONFIG_HOME/radium/vcenter.toml``, else ``~/.config/radium/vcenter.toml``."""
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return home / "radium" / "vcenter.toml"


def lab_profiles_path() -> Path:
    """The lab's profiles (`radium-admin lab up` writes them for its vCenter simulator)."""
    from radium.remoting import lab_profile_dir

    return lab_profile_dir() / "vcenter.toml"


def active_profiles_path() -> Path:
    """The profiles in effect: the user's file, else the lab's (`radium-admin lab up`) when it exists."""
    user = profiles_path()
    if user.exists():
        return user
    lab = lab_profiles_path()
    return lab if lab.exists() else user


def load_profiles(path: Path | None = None) -> ProfileFile:
    """The saved profiles (none when the file does not exist); errors name file and key."""
    path = path or profiles_path()
    if not path.exists():
        return ProfileFile(source=str(path))
    raw = load_toml(path, _RawProfileFile)
    loaded = ProfileFile(default=raw.default, source=str(path))
    for name, body in raw.profiles.items():
        try:
            loaded.profiles[name] = p = msgspec.convert(body, Profile)
        except msgspec.ValidationError as exc:
            key, what = explain_validation(exc)  # msgspec's path stops at a table's key; name it ourselves
            raise ConfigError(f"{path}: profiles.{name}.{key}: {what}", file=str(path)) from None
        if not _NAME.match(name):
            raise ConfigError(f"{path}: profiles.{name}: not a valid profile name", file=str(path))
        try:
            normalize_url(p.url)
            if p.thumbprint:
                parse_thumbprint(p.thumbprint)
        except UsageError as exc:
            raise ConfigError(f"{path}: profiles.{name}: {exc.message}", file=str(path)) from None
    if loaded.default and loaded.default not in loaded.profiles:
        raise ConfigError(f"{path}: default: no profile named {loaded.default!r}", file=str(path))
    return loaded


def _write(profiles: ProfileFile, path: Path) -> None:
    write_atomic(path, dump_toml(profiles), mode=0o600)
    os.chmod(path, 0o600)  # an existing file keeps no wider mode


def write_profile(name: str, profile: Profile, *, default: bool = False, path: Path | None = None) -> Path:
    """Add or replace profile `name`; it becomes the default when asked or when there is none."""
    if not _NAME.match(name):
        raise UsageError(f"profile name {name!r}: use letters, digits, '.', '_' and '-' (64 at most)")
    if "@" in urlsplit(normalize_url(profile.url)).netloc:
        raise UsageError("a profile's URL must not carry credentials")
    path = path or profiles_path()
    profiles = load_profiles(path)
    profiles.profiles[name] = profile
    if default or not profiles.default:
        profiles.default = name
    _write(profiles, path)
    return path


def delete_profile(name: str, path: Path | None = None) -> Profile:
    """Remove profile `name` (and the default mark if it had it); return what it was."""
    path = path or profiles_path()
    profiles = load_profiles(path)
    if name not in profiles.profiles:
        from .names import closest

        raise _no_profile(name, profiles, closest(name, profiles.profiles))
    removed = profiles.profiles.pop(name)
    if profiles.default == name:
        profiles.default = next(iter(sorted(profiles.profiles)), "")
    _write(profiles, path)
    return removed


def _no_profile(name: str, profiles: ProfileFile, close: list[str]) -> UsageError:
    if close:
        hint = "close matches: " + ", ".join(close)
    elif profiles.profiles:
        hint = "saved: " + ", ".join(sorted(profiles.profiles))
    else:
        hint = "none are saved; save one with `radium-admin profile save NAME --url URL --user USER`"
    return UsageError(f"no vCenter profile named {name!r} in {profiles.source} ({hint})")


# --- values --------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """``vc.example.com``, ``vc:8443`` or ``https://[user@]vc[:port][/sdk]`` → ``https://vc[:port]/sdk``.

    Credentials in the URL are kept (`resolve` takes them out); only https is accepted.
    """
    text = url.strip()
    if not text:
        raise UsageError("the vCenter URL is empty")
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise UsageError(f"vCenter URL {url!r}: only https is supported")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"vCenter URL {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise UsageError(f"vCenter URL {url!r}: no host name")
    path = parts.path if parts.path not in ("", "/") else "/sdk"
    del port  # checked above; kept in the netloc as given
    return f"https://{parts.netloc}{path}"


def parse_thumbprint(text: str) -> str:
    """A SHA-256 thumbprint in any common spelling → ``AA:BB:...`` (64 hex digits)."""
    digits = re.sub(r"[\s:]", "", text).lower()
    if digits.startswith("sha256"):
        digits = digits.removeprefix("sha256").lstrip("=")
    if not re.fullmatch(r"[0-9a-f]+", digits or "-"):
        raise UsageError(f"thumbprint {text!r}: expected hexadecimal digits (AA:BB:...)")
    if len(digits) == 40:
        raise UsageError(
            "that is a SHA-1 thumbprint; pin the SHA-256 one "
            "(`openssl x509 -noout -fingerprint -sha256`, or vCenter's certificate details)"
        )
    if len(digits) != 64:
        raise UsageError(f"thumbprint {text!r}: a SHA-256 thumbprint has 64 hex digits, not {len(digits)}")
    return format_thumbprint(digits)


def format_thumbprint(hexdigest: str) -> str:
    h = hexdigest.replace(":", "").upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UsageError(f"{name}={value!r}: expected 1/0, true/false, yes/no")


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``RADIUM_VCENTER_*`` variables that are set (non-empty), by setting name."""
    env = os.environ if env is None else env
    return {key: env[var] for key, var in ENV.items() if env.get(var)}


def _clean(url: str) -> str:
    """A profile's URL as `resolve` makes it: normalised, without credentials."""
    parts = urlsplit(normalize_url(url))
    return f"https://{parts.netloc.rpartition('@')[2]}{parts.path}"


def read_password_file(path: Path) -> str:
    """The first line of a password file that only its owner (this user) can read."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"password file {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077 or st.st_uid != os.geteuid():
        raise UsageError(
            f"password file {path}: others may read it (mode {st.st_mode & 0o777:04o}) or it is not yours: "
            f"chmod 600 {path}"
        )
    password = text.splitlines()[0] if text else ""
    if not password:
        raise UsageError(f"password file {path} is empty")
    return password


# --- the resolved settings -------------------------------------------------------------------


@dataclass
class ConnectionSettings:
    """Everything needed to open a session with one vCenter."""

    url: str  #: https://host[:port]/sdk, without credentials
    user: str
    password: str | None = field(default=None, repr=False)
    thumbprint: str | None = None  #: pinned SHA-256, AA:BB:... form
    ca: Path | None = None  #: CA bundle to verify the server with (else the system's)
    insecure: bool = False  #: no verification at all (asked for explicitly)
    profile: str | None = None  #: the profile these came from, if any
    password_source: str = ""  #: where the password came from (for messages)
    timeout: float = CONNECT_TIMEOUT

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/sdk"

    @property
    def where(self) -> str:
        """How messages name this vCenter."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"vCenter at {host}:{self.port}"

    @property
    def tls(self) -> str:
        """How the server is trusted, in words."""
        if self.thumbprint:
            return f"pinned SHA-256 {self.thumbprint}"
        if self.insecure:
            return "not verified (--insecure)"
        return f"verified with {self.ca}" if self.ca else "verified with the system's CAs"


def resolve(
    *,
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    thumbprint: str | None = None,
    ca: str | Path | None = None,
    insecure: bool | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    profiles_file: Path | None = None,
    ask_password: Callable[[str], str] | None = None,
    need_password: bool = True,
    use_profiles: bool = True,
) -> ConnectionSettings:
    """Merge explicit values, the environment and a profile into `ConnectionSettings`.

    The password, when `need_password`, comes from `password`, ``RADIUM_VCENTER_PASSWORD``,
    the URL, the system keyring, then `ask_password(prompt)` (a terminal prompt); with
    none of those, a `UsageError` says how to give one.  With `use_profiles` false,
    saved profiles are not consulted (what `profile save` needs).
    """
    e = environment(env)
    given: dict[str, object] = dict(url=url, user=user, thumbprint=thumbprint, ca=ca, insecure=insecure)
    explicit: dict[str, object] = {k: v for k, v in given.items() if v not in (None, "", False)}
    from_env: dict[str, object] = {k: e[k] for k in ("url", "user", "thumbprint", "ca") if k in e}
    if "insecure" in e and _flag(e["insecure"], ENV["insecure"]):
        from_env["insecure"] = True

    chosen = (profile or e.get("profile")) if use_profiles else None
    saved: Profile | None = None
    if use_profiles and (chosen or not (explicit.get("url") or from_env.get("url"))):
        profiles = load_profiles(profiles_file or active_profiles_path())
        if chosen and chosen not in profiles.profiles and profiles_file is None:
            lab = lab_profiles_path()  # `--profile lab` finds the lab's beside the user's own profiles
            if lab.exists() and Path(profiles.source) != lab:
                lab_profiles = load_profiles(lab)
                if chosen in lab_profiles.profiles:
                    profiles = lab_profiles
        if chosen and chosen not in profiles.profiles:
            from .names import closest

            raise _no_profile(chosen, profiles, closest(chosen, profiles.profiles))
        chosen = chosen or profiles.default or None
        saved = profiles.profiles.get(chosen) if chosen else None
    from_profile: dict[str, object] = {}
    if saved is not None:
        from_profile = {k: v for k, v in msgspec.structs.asdict(saved).items() if v not in ("", False)}

    levels: list[dict[str, object]] = [explicit, from_env, from_profile]
    merged: dict[str, object] = {}
    for key in ("url", "user"):
        merged[key] = next((lv[key] for lv in levels if lv.get(key)), None)
    tls_keys = ("thumbprint", "ca", "insecure")
    tls_level: dict[str, object] = next((lv for lv in levels if any(lv.get(k) for k in tls_keys)), {})
    chosen_tls = [k for k in tls_keys if tls_level.get(k)]
    if len(chosen_tls) > 1:
        names = {"thumbprint": "--thumbprint", "ca": "--ca", "insecure": "--insecure"}
        raise UsageError("choose one way to trust the server: " + " or ".join(names[k] for k in chosen_tls))

    if not merged["url"]:
        raise UsageError(
            "no vCenter given: pass --url URL, set RADIUM_VCENTER_URL, or save a profile "
            "(`radium-admin profile save NAME --url URL --user USER`)"
        )
    raw_url = normalize_url(str(merged["url"]))
    parts = urlsplit(raw_url)
    url_user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc.rpartition("@")[2]
    clean_url = f"https://{netloc}{parts.path}"
    user_value = str(merged["user"]) if merged["user"] else url_user
    if not user_value:
        raise UsageError(
            "no vCenter user given: pass --user, set RADIUM_VCENTER_USER, or save it in a profile"
        )

    settings = ConnectionSettings(
        url=clean_url,
        user=user_value,
        thumbprint=parse_thumbprint(str(tls_level["thumbprint"])) if tls_level.get("thumbprint") else None,
        ca=Path(str(tls_level["ca"])).expanduser() if tls_level.get("ca") else None,
        insecure=bool(tls_level.get("insecure")),
        profile=chosen if saved is not None else None,
    )
    if settings.ca is not None and not settings.ca.is_file():
        raise UsageError(f"CA bundle {settings.ca}: no such file")
    if not need_password:
        return settings

    if password is not None:
        settings.password, settings.password_source = password, "the caller"
    elif "password" in e:
        settings.password, settings.password_source = e["password"], ENV["password"]
    elif url_password is not None:
        settings.password, settings.password_source = url_password, "the URL"
    elif saved is not None and saved.password_file and settings.url == _clean(saved.url):
        settings.password = read_password_file(Path(saved.password_file).expanduser())
        settings.password_source = f"the file {saved.password_file}"
    else:
        stored = secrets.get_password(settings.url, settings.user)
        if stored is not None:
            settings.password, settings.password_source = stored, "the system keyring"
        elif ask_password is not None:
            settings.password = ask_password(f"Password for {settings.user} at {settings.where}: ")
            settings.password_source = "the prompt"
    if not settings.password:
        raise UsageError(
            f"no password for {settings.user} at {settings.where}: pass --password-stdin, set "
            f"{ENV['password']}, store it in the system keyring (`radium-admin profile save NAME "
            "--keyring`), or run on a terminal to be asked"
        )
    return settings
