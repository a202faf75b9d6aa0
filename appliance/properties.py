"""The appliance's configuration contract: the OVF properties its first boot reads.

One table, `PROPERTIES`, is the single source of the contract: `ovf.descriptor()`
declares each entry in the descriptor's ProductSection, `ovf.validate()` checks
that a descriptor declares the required ones, `parse()` turns the values vSphere
hands the VM into checked `Settings` (the first boot's input), and a deploy
command can call `parse()` on the values it is about to send, so that a bad value
is refused on the operator's machine before anything is created in vCenter.

Each property reaches the VM in one of two ways (the first boot reads both):

- as a vApp property, in the OVF environment document that vSphere makes
  available as the guest variable `guestinfo.ovfEnv` (the descriptor asks for the
  `com.vmware.guestInfo` transport): `<Property oe:key="radium.name" oe:value=.../>`;
- as a guest variable of its own, `guestinfo.` + the key (for example
  `guestinfo.radium.network.ip`), set in the VM's extraConfig.  A guest variable
  that is set (non-empty) overrides the OVF environment's value.

An empty value means "not set": the default applies, and a required property
without a value is an error.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import zmq

from radium.remoting import DEFAULT_PORT, NAME_RE, ConfigError, is_z85_key

GUESTINFO_PREFIX = "guestinfo."

OvfType = Literal["string", "uint16"]


@dataclass(frozen=True)
class PropertySpec:
    key: str
    type: OvfType
    label: str
    description: str
    category: str
    default: str = ""
    required: bool = False
    password: bool = False  # the vSphere client masks it; never logged by the first boot
    qualifiers: str = ""  # OVF qualifiers: MinLen(n) MaxLen(n) MinValue(n) MaxValue(n)

    @property
    def guestinfo(self) -> str:
        """The guest variable that carries this property on its own."""
        return GUESTINFO_PREFIX + self.key


PROPERTIES: tuple[PropertySpec, ...] = (
    PropertySpec(
        "radium.name",
        "string",
        "Appliance name",
        "The appliance's name: radiumd's server name, shown to users by `radium list-gpus`, and the "
        "VM's host name. Letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit.",
        "Appliance",
        required=True,
        qualifiers="MinLen(1) MaxLen(63)",
    ),
    PropertySpec(
        "radium.server_secret_key",
        "string",
        "Server secret key",
        "The appliance's CURVE secret key (40 Z85 characters). The operator generates the key pair, "
        "keeps the public key to give to clients, and hands the appliance its secret key here.",
        "Keys",
        required=True,
        password=True,
        qualifiers="MinLen(40) MaxLen(40)",
    ),
    PropertySpec(
        "radium.admin_public_key",
        "string",
        "Operator public key",
        "The CURVE public key (40 Z85 characters) of the operator allowed to enrol and revoke "
        "clients over the network (`radium-admin enroll VM --appliance NAME`).",
        "Keys",
        required=True,
        qualifiers="MinLen(40) MaxLen(40)",
    ),
    PropertySpec(
        "radium.admin_name",
        "string",
        "Operator name",
        "The name the operator key is filed under (admins.d/NAME.key).",
        "Keys",
        default="operator",
        qualifiers="MaxLen(63)",
    ),
    PropertySpec(
        "radium.listen_port",
        "uint16",
        "Port",
        "The TCP port radiumd listens on, on every address (CurveZMQ: encrypted and authenticated).",
        "Appliance",
        default=str(DEFAULT_PORT),
        qualifiers="MinValue(1) MaxValue(65535)",
    ),
    PropertySpec(
        "radium.metrics_listen",
        "string",
        "Metrics address",
        "HOST:PORT where radiumd serves Prometheus metrics over plain HTTP, or 'off'. Keep it on "
        "loopback unless the network it is on is trusted.",
        "Appliance",
        default="127.0.0.1:9450",
    ),
    PropertySpec(
        "radium.network.ip",
        "string",
        "IP address",
        "'dhcp', or a static address with its prefix length: ADDR/PREFIX (IPv4 or IPv6).",
        "Network",
        default="dhcp",
    ),
    PropertySpec(
        "radium.network.gateway",
        "string",
        "Gateway",
        "The default gateway (with a static address; empty for none).",
        "Network",
    ),
    PropertySpec(
        "radium.network.dns",
        "string",
        "DNS servers",
        "DNS server addresses, separated by commas or spaces (empty: those DHCP gives, or none).",
        "Network",
    ),
    PropertySpec(
        "radium.ssh_authorized_keys",
        "string",
        "SSH public keys",
        "OpenSSH public keys allowed to log in as root (for Ansible and for maintenance), separated "
        "by ';' or new lines. Empty: no SSH login.",
        "Appliance",
    ),
)

BY_KEY: dict[str, PropertySpec] = {p.key: p for p in PROPERTIES}
REQUIRED: tuple[str, ...] = tuple(p.key for p in PROPERTIES if p.required)
SECRET: frozenset[str] = frozenset(p.key for p in PROPERTIES if p.password)


class PropertyError(ConfigError):
    """One or more properties are missing or invalid; each problem names its property."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} problems with the appliance's properties:\n  " + "\n  ".join(problems)
        super().__init__(text, problems=problems)


@dataclass(frozen=True)
class Network:
    dhcp: bool = True
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


@dataclass(frozen=True)
class Settings:
    """What the first boot applies: every property, checked and typed."""

    name: str
    server_secret_key: str = field(repr=False)
    server_public_key: str
    admin_public_key: str
    admin_name: str = "operator"
    listen_port: int = DEFAULT_PORT
    metrics_listen: str | None = "127.0.0.1:9450"  # None: metrics off
    network: Network = field(default_factory=Network)
    ssh_authorized_keys: tuple[str, ...] = ()

    @property
    def hostname(self) -> str | None:
        """The name as a host name (RFC 1123 labels), or None if it cannot be one."""
        name = self.name.rstrip(".")
        labels = name.split(".")
        if len(name) <= 253 and all(
            re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", x) for x in labels
        ):
            return name
        return None


SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _ssh_keys(text: str) -> tuple[str, ...]:
    keys = []
    for raw in re.split(r"[;\n]", text):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
            raise ValueError(f"not an OpenSSH public key: {line[:40]!r}... (expected TYPE BASE64 [COMMENT])")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            raise ValueError(f"not an OpenSSH public key: bad base64 in {line[:40]!r}...") from None
        if not blob.startswith(len(parts[0]).to_bytes(4, "big") + parts[0].encode()):
            raise ValueError(f"not an OpenSSH public key: the key data is not a {parts[0]} key")
        keys.append(" ".join(parts))
    return tuple(keys)


def _metrics(text: str) -> str | None:
    if text.lower() in ("off", "no", "false", "disabled"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or re.search(r"[\s/]", host):
        raise ValueError(f"expected HOST:PORT or 'off', got {text!r}")
    return text


def _ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None


def parse(values: Mapping[str, str], origin: Callable[[str], str] | None = None) -> Settings:
    """Check the raw property values and turn them into `Settings`.

    `values` maps property keys to strings (missing or empty: not set).  Every
    problem is collected and raised together as a `PropertyError` whose lines
    each start with the property's key (and, through `origin`, where its value
    came from).  A secret value never appears in a message.
    """
    problems: list[str] = []

    def where(key: str) -> str:
        return f"{key} ({origin(key)})" if origin else key

    def get(key: str) -> str:
        spec = BY_KEY[key]
        value = (values.get(key) or "").strip()
        if not value and spec.required:
            problems.append(f"{where(key)}: missing: {spec.description}")
        return value or spec.default

    def check(key: str, convert, *, default=None):  # type: ignore[no-untyped-def]
        text = get(key)
        if not text:
            return default
        try:
            return convert(text)
        except ValueError as exc:
            problems.append(f"{where(key)}: {exc}")
            return default

    def name(text: str) -> str:
        if not NAME_RE.fullmatch(text):
            raise ValueError(
                f"invalid name {text!r}: use letters, digits, '.', '_' and '-' "
                "(at most 63, starting with a letter or digit)"
            )
        return text

    def z85(what: str, secret: bool = False):  # type: ignore[no-untyped-def]
        def convert(text: str) -> str:
            if not is_z85_key(text):
                shown = f"a value of {len(text)} characters" if secret else repr(text)
                raise ValueError(f"expected {what} of 40 Z85 characters, got {shown}")
            return text

        return convert

    def port(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ValueError(f"expected a TCP port 1-65535, got {text!r}")
        return int(text)

    server_name = check("radium.name", name, default="")
    secret = check("radium.server_secret_key", z85("a CURVE secret key", secret=True), default="")
    admin_key = check("radium.admin_public_key", z85("a CURVE public key"), default="")
    admin_name = check("radium.admin_name", name, default="operator")
    listen_port = check("radium.listen_port", port, default=DEFAULT_PORT)
    metrics = check("radium.metrics_listen", _metrics, default=None)

    ip_text = get("radium.network.ip")
    address = None
    if ip_text.lower() != "dhcp":
        if "/" not in ip_text:
            problems.append(f"{where('radium.network.ip')}: expected 'dhcp' or ADDR/PREFIX, got {ip_text!r}")
        else:
            try:
                address = ipaddress.ip_interface(ip_text)
            except ValueError:
                problems.append(f"{where('radium.network.ip')}: {ip_text!r} is not an ADDR/PREFIX")
    gateway = check("radium.network.gateway", lambda t: _ip(t, "gateway"))
    if gateway is not None:
        if address is None:
            problems.append(f"{where('radium.network.gateway')}: a gateway needs a static radium.network.ip")
        elif gateway.version != address.version:
            problems.append(
                f"{where('radium.network.gateway')}: {gateway} is IPv{gateway.version}, "
                f"the address IPv{address.version}"
            )
    dns = check(
        "radium.network.dns",
        lambda t: tuple(_ip(x, "DNS server") for x in re.split(r"[,\s]+", t) if x),
        default=(),
    )
    ssh = check("radium.ssh_authorized_keys", _ssh_keys, default=())

    if problems:
        raise PropertyError(problems)
    public = zmq.curve_public(secret.encode()).decode()
    return Settings(
        name=server_name,
        server_secret_key=secret,
        server_public_key=public,
        admin_public_key=admin_key,
        admin_name=admin_name,
        listen_port=listen_port,
        metrics_listen=metrics,
        network=Network(dhcp=address is None, address=address, gateway=gateway, dns=dns),
        ssh_authorized_keys=ssh,
    )


def unknown(values: Mapping[str, str]) -> list[str]:
    """Keys that look like ours (radium.*) but are not in the contract: most likely typos."""
    return sorted(k for k in values if k.startswith("radium.") and k not in BY_KEY)
