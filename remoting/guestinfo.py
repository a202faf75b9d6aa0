"""The guestinfo contract: a client VM's configuration handed over through vCenter.

`radium-admin register-vm` writes these keys into the VM's configuration
(``ReconfigVM`` ``extraConfig``); inside the VM, `radium configure --from-guestinfo`
reads them with open-vm-tools (``vmware-rpctool "info-get KEY"``) and installs
the client configuration they describe.  Every value is one line of text.

    guestinfo.radium.format             "1" (this layout)
    guestinfo.radium.client.name        the client's name on the appliances
    guestinfo.radium.client.public_key  its CURVE public key (Z85, 40 characters)
    guestinfo.radium.client.secret_key  its CURVE secret key (Z85): the VM's own
    guestinfo.radium.appliances         compact JSON list: [{"name", "address", "public_key"}, ...]

Security: guestinfo is readable by root inside the guest (any process that can
talk to the VMware tools backdoor) and by every vCenter user with the right to
read the VM's configuration (and writable by those who may edit it).  That is
the same trust as a Bitfusion client token delivered the same way: the secret
key identifies this VM to the appliances and nothing more; revoke it with
`radium-admin unregister-vm`.  Without open-vm-tools the variable
``RADIUM_GUESTINFO_DIR`` names a folder of files named like the keys (a test and
offline aid; `radium-admin register-vm --ssh` uses it to push the same keys).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from ._config import ClientConfig, check_client_config, convert
from ._errors import ConfigError

__all__ = [
    "APPLIANCES",
    "FORMAT",
    "KEYS",
    "NAME",
    "PREFIX",
    "PUBLIC_KEY",
    "SECRET_KEY",
    "Reader",
    "decode",
    "default_reader",
    "directory_reader",
    "encode",
    "read",
    "rpctool_reader",
]

PREFIX = "guestinfo.radium."
FORMAT = PREFIX + "format"
NAME = PREFIX + "client.name"
PUBLIC_KEY = PREFIX + "client.public_key"
SECRET_KEY = PREFIX + "client.secret_key"
APPLIANCES = PREFIX + "appliances"
#: Every key of the contract, in the order they are written.
KEYS = (FORMAT, NAME, PUBLIC_KEY, SECRET_KEY, APPLIANCES)
FORMAT_VERSION = "1"

ENV_DIR = "RADIUM_GUESTINFO_DIR"
RPCTOOL = "vmware-rpctool"

#: Reads one guestinfo key: its value, or None when the key is not set.
Reader = Callable[[str], str | None]


def encode(config: ClientConfig) -> dict[str, str]:
    """The guestinfo keys and values that describe `config` (key → value)."""
    appliances = msgspec.to_builtins(config.appliances)  # [{"name", "address", "public_key"}, ...]
    return {
        FORMAT: FORMAT_VERSION,
        NAME: config.client.name,
        PUBLIC_KEY: config.client.public_key,
        SECRET_KEY: config.client.secret_key,
        APPLIANCES: json.dumps(appliances, separators=(",", ":")),
    }


def decode(values: Mapping[str, str | None], source: str = "guestinfo") -> ClientConfig:
    """The client configuration the guestinfo `values` describe; `ConfigError` names the bad key."""
    fmt = values.get(FORMAT) or FORMAT_VERSION
    if fmt != FORMAT_VERSION:
        raise ConfigError(
            f"{source}: {FORMAT} is {fmt!r}; this radium reads format {FORMAT_VERSION}: upgrade radium",
            key=FORMAT,
        )
    missing = [k for k in (NAME, PUBLIC_KEY, SECRET_KEY, APPLIANCES) if not values.get(k)]
    if missing:
        raise ConfigError(
            f"{source}: {', '.join(missing)} not set: this VM is not registered with Radium "
            "(the operator runs `radium-admin register-vm VM --appliance NAME`)",
            key=missing[0],
        )
    try:
        appliances = json.loads(values[APPLIANCES] or "")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: {APPLIANCES}: not valid JSON: {exc}", key=APPLIANCES) from None
    data = {
        "client": {
            "name": values[NAME],
            "public_key": values[PUBLIC_KEY],
            "secret_key": values[SECRET_KEY],
        },
        "appliances": appliances,
    }
    config = convert(data, ClientConfig, source)
    check_client_config(config)
    return config


def rpctool_reader(tool: str = RPCTOOL) -> Reader:
    """Read keys through open-vm-tools' ``vmware-rpctool "info-get KEY"`` (inside a VMware VM)."""
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(
            f"{tool} not found: install open-vm-tools (this must run inside a VMware VM), "
            f"or point {ENV_DIR} at a folder of guestinfo files"
        )

    def read(key: str) -> str | None:
        try:
            out = subprocess.run(
                [path, f"info-get {key}"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{tool} info-get {key}: {exc}") from None
        if out.returncode != 0:
            # "No value found" when the key is unset; anything else (no VMware backdoor) is an error.
            if "no value" in (out.stdout + out.stderr).lower():
                return None
            detail = (out.stderr or out.stdout).strip() or f"exit status {out.returncode}"
            raise ConfigError(f"{tool} info-get {key} failed: {detail} (is this a VMware VM?)")
        return out.stdout.rstrip("\r\n")

    return read


def directory_reader(folder: Path) -> Reader:
    """Read keys from files named like them in `folder` (a missing file is an unset key)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{ENV_DIR}={folder}: not a folder")

    def read(key: str) -> str | None:
        try:
            return (folder / key).read_text().rstrip("\r\n")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{folder / key}: cannot read: {exc.strerror or exc}") from None

    return read


def default_reader(env: Mapping[str, str] | None = None) -> tuple[Reader, str]:
    """The reader to use here, and a description of it: ``$RADIUM_GUESTINFO_DIR``, else vmware-rpctool."""
    env = os.environ if env is None else env
    folder = env.get(ENV_DIR)
    if folder:
        return directory_reader(Path(folder)), f"guestinfo files in {folder}"
    return rpctool_reader(), "guestinfo (vmware-rpctool)"


def read(reader: Reader | None = None, source: str | None = None) -> ClientConfig:
    """Read the contract's keys with `reader` (default: `default_reader()`) into a client configuration."""
    if reader is None:
        reader, described = default_reader()
        source = source or described
    return decode({key: reader(key) for key in KEYS}, source or "guestinfo")
