"""The one configuration model of the data plane: radiumd's and the client's.

Files are TOML, validated at load: an unknown key or a bad value raises a
`ConfigError` naming the file, the key and what was expected.  Relative paths
in a file are taken relative to that file's folder.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from ._errors import ConfigError
from ._keys import KeyPair, is_z85_key, write_atomic

DEFAULT_PORT = 7450
DEFAULT_DAEMON_CONFIG = Path("/etc/radium/radiumd.toml")
SYSTEM_CLIENT_CONFIG = Path("/etc/radium/client.toml")

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# --- radiumd -------------------------------------------------------------------


class ServerSection(Section):
    name: str = msgspec.field(default_factory=socket.gethostname)
    listen: str = f"tcp://0.0.0.0:{DEFAULT_PORT}"
    state_dir: str = "/var/lib/radium"  # server key pair, caches
    clients_dir: str = "/etc/radium/clients.d"  # authorised client public keys
    admins_dir: str = "/etc/radium/admins.d"  # authorised operator public keys
    heartbeat_interval: Seconds = 2.0
    lease_timeout: Seconds = 6.0  # a session silent this long loses its leases
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1 << 20


class MetricsSection(Section):
    enabled: bool = True
    # Plain HTTP: keep it on loopback (the default) or behind a scraper-side tunnel.
    listen: str = "127.0.0.1:9450"


class DevicesSection(Section):
    backends: list[Literal["nvml", "opencl"]] = msgspec.field(default_factory=lambda: ["nvml", "opencl"])
    exclude: list[str] = []  # device ids never to offer
    health_interval: Seconds = 60.0


class RunSection(Section):
    """How `radium run` processes are carried out on this appliance."""

    # Client uid/gid N of a run runs as id_base + slot*65536 + N: root must be given
    # id_base .. id_base + id_slots*65536 - 1 in /etc/subuid and /etc/subgid.
    id_base: Annotated[int, msgspec.Meta(ge=65536)] = 200000
    id_slots: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100  # runs at once
    cache_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 10 << 30  # content store limit
    # Files a client's runs read, kept as a real tree under its next runs' overlay (served
    # by the kernel, not FUSE): at most this many bytes per client; 0 turns it off.
    warm_tree_bytes: Annotated[int, msgspec.Meta(ge=0)] = 4 << 30
    # A run is served only stored content its own client sent (run/tenants.py); clients named
    # together here are one tenant and share what they send: {"team-a": ["vm1", "vm2"]}.
    tenant_groups: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")], list[str]] = {}
    # Each run in a cgroup of its own: its memory (swap counted; 0: the appliance's memory
    # less a reserve for itself, and never more), its processes, its share of the CPU.
    memory_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The most a run may ask for (`radium run --memory`); 0: what the appliance can spare.
    memory_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    # What a run may write (its overlay's upper layer, on a file system of its own): a run
    # past it gets ENOSPC, not the appliance's disk; 0: unbounded, on the state disk.
    writable_bytes: Annotated[int, msgspec.Meta(ge=0)] = 32 << 30
    pids_max: Annotated[int, msgspec.Meta(ge=16)] = 4096
    cpu_weight: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100
    # A file a run reads in part (a library the loader maps) is fetched whole in the background
    # while the process runs, so that the client's next runs map it from the warm tree: warm
    # runs near local, for more bytes (and some CPU) in the first. false: only what is read.
    complete_files: bool = True
    # When the process exits with such files not yet whole, the run's end waits for them a
    # quarter of the process's own time, at least the first and at most the second number of
    # seconds, before the client hears of the end; what is left comes in its next runs.
    complete_at_exit: tuple[Seconds, Seconds] = (0.2, 1.0)
    # While a run's process makes file operations, the appliance's idle cores poll rather than
    # halt (a CPU latency request of 0 µs, let go after a second without one): on a VM each
    # wake-up of a halted core costs a round trip to the hypervisor, and every file operation
    # wakes threads in turn (run/wakeups.py). The cost: idle cores spin meanwhile (power, and
    # on a shared host CPU time other VMs could have). false: the cores halt as before.
    poll_idle: bool = True
    # Device nodes every run may open besides the basic ones (/dev/null, ttys...) and its
    # lease's devices' (run/devicefilter.py): an RDMA NIC's /dev/infiniband/uverbs0, say.
    device_nodes: list[Annotated[str, msgspec.Meta(pattern=r"^/")]] = []
    # Supervisors started ahead of need (Python and its imports done, waiting for a
    # job), so that a run does not wait ~0.3 s for one to start; 0 starts each on demand.
    spare_supervisors: Annotated[int, msgspec.Meta(ge=0, le=16)] = 1
    # A run holding part of an NVIDIA device gets a private CUDA MPS daemon that holds it
    # to its share ("auto", where nvidia-cuda-mps-control exists); "off" leaves it unenforced.
    mps: Literal["auto", "off"] = "auto"
    # File traffic of a run over a connection of its own between the client and the run's
    # supervisor (a fresh TCP port of server.listen's address, a one-time key, AES-GCM),
    # not relayed by radiumd: much faster for content. Off where only server.listen's port
    # is let through to the appliance; runs then take the relayed path.
    direct: bool = True
    # Appliance paths bound over the client's tree: driver configuration and libraries.
    appliance_paths: list[str] = msgspec.field(default_factory=lambda: ["/etc/OpenCL/vendors"])


class LogSection(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class DaemonConfig(Section):
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    devices: DevicesSection = msgspec.field(default_factory=DevicesSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    run: RunSection = msgspec.field(default_factory=RunSection)
    source: str = ""  # the file it was read from; not a key users set

    def resolve(self, base: Path) -> DaemonConfig:
        s = self.server
        for attr in ("state_dir", "clients_dir", "admins_dir"):
            setattr(s, attr, str((base / getattr(s, attr)).resolve()))
        return self


# --- the client ----------------------------------------------------------------


class ApplianceEntry(Section):
    name: str
    address: str  # tcp://host:port
    public_key: str  # the appliance's CURVE public key, Z85


class ClientSection(Section):
    name: str
    public_key: str
    secret_key: str


class ExportsSection(Section):
    """What `radium run` withholds from appliances beyond the defaults (run/exports.py):
    absolute paths or ~/..., globs allowed; `allow`: exceptions inside denied folders."""

    deny: list[str] = []
    allow: list[str] = []


class SystemExports(Section, forbid_unknown_fields=False):
    """The operator's /etc/radium/client.toml as a user's `radium run` reads it when it uses
    another configuration: its [exports] only (other sections are not this reader's)."""

    exports: ExportsSection = msgspec.field(default_factory=ExportsSection)
    source: str = ""


class ClientConfig(Section):
    client: ClientSection
    appliances: list[ApplianceEntry] = []
    exports: ExportsSection = msgspec.field(default_factory=ExportsSection)
    source: str = ""

    @property
    def keys(self) -> KeyPair:
        return KeyPair(self.client.public_key, self.client.secret_key)

    def appliance(self, name: str) -> ApplianceEntry:
        for a in self.appliances:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.appliances) or "none"
        raise ConfigError(f"no appliance named {name!r} in {self.source} (configured: {known})")


# --- loading and saving --------------------------------------------------------

C = TypeVar("C", bound=Section)

_PATH_RE = re.compile(r"at `\$\.?(.*)`$")


def explain_validation(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Turn msgspec's 'Expected `int`, got `str` - at `$.server.port`' into (key, what)."""
    text = str(exc)
    key = ""
    match = _PATH_RE.search(text)
    if match:
        key = match.group(1).replace("[", ".").replace("]", "")
        text = text[: match.start()].rstrip(" -")
    unknown = re.match(r"Object contains unknown field `(.+)`", text)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        text = "unknown key"
    return key or "(top level)", text[:1].lower() + text[1:]


def convert(data: dict[str, Any], model: type[C], source: str) -> C:
    """Validate a parsed document against a model; errors name file and key."""
    try:
        config = msgspec.convert(data, model)
    except msgspec.ValidationError as exc:
        key, what = explain_validation(exc)
        raise ConfigError(f"{source}: {key}: {what}", file=source, key=key) from None
    config.source = source  # type: ignore[attr-defined]
    return config


def load_toml(path: Path, model: type[C]) -> C:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", file=str(path)) from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text", file=str(path)) from None
    if "source" in data:
        raise ConfigError(f"{path}: source: unknown key", file=str(path), key="source")
    return convert(data, model, str(path))


def load_daemon_config(path: Path | None) -> DaemonConfig:
    """radiumd's configuration; with no file at the default path, the defaults."""
    if path is None:
        if not DEFAULT_DAEMON_CONFIG.exists():
            return DaemonConfig()
        path = DEFAULT_DAEMON_CONFIG
    config = load_toml(path, DaemonConfig)
    _check_listen(config.server.listen, f"{path}: server.listen")
    _check_listen(config.metrics.listen, f"{path}: metrics.listen", scheme="")
    s = config.server
    if s.lease_timeout <= s.heartbeat_interval:
        raise ConfigError(
            f"{path}: server.lease_timeout: must be longer than server.heartbeat_interval "
            f"({s.lease_timeout:g} <= {s.heartbeat_interval:g}), or every session expires"
        )
    low, high = config.run.complete_at_exit
    if low > high:
        raise ConfigError(
            f"{path}: run.complete_at_exit: the least ({low:g} s) is more than the most ({high:g} s); "
            "give [LEAST, MOST]"
        )
    return config.resolve(Path(path).resolve().parent)


def _check_listen(address: str, where: str, scheme: str = "tcp://") -> None:
    match = re.match(rf"^{re.escape(scheme)}(?:[^:/\s\[\]]+|\[[0-9a-fA-F:]+\]):(\d{{1,5}})$", address)
    if not match or int(match.group(1)) > 65535:
        raise ConfigError(f"{where}: expected {scheme}HOST:PORT, got {address!r}")


def address_host(address: str) -> str:
    """The host of a `tcp://HOST:PORT` address (an IPv6 one without its brackets)."""
    return address.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")


def client_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the client reads its configuration (in `environ`, by default this process's).

    RADIUM_CONFIG, then ~/.config/radium/client.toml, then /etc/radium/client.toml,
    then the lab's profile (`radium-admin lab up`) when nothing else exists.
    """
    env = os.environ if environ is None else environ
    if env.get("RADIUM_CONFIG"):
        return Path(env["RADIUM_CONFIG"])
    home = Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config")
    user = home / "radium" / "client.toml"
    if user.exists():
        return user
    if SYSTEM_CLIENT_CONFIG.exists():
        return SYSTEM_CLIENT_CONFIG
    lab = lab_profile_dir(env) / "client.toml"
    return lab if lab.exists() else user


def lab_profile_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("RADIUM_LAB_DIR"):
        return Path(env["RADIUM_LAB_DIR"])
    return _home(env) / ".local" / "state" / "radium" / "lab"


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def load_client_config(path: Path | None = None) -> ClientConfig:
    path = path or client_config_path()
    if not Path(path).exists():
        raise ConfigError(
            f"{path}: no client configuration. Ask your operator for a bundle and run "
            "`radium configure --bundle FILE`.",
            file=str(path),
        )
    config = load_toml(path, ClientConfig)
    check_client_config(config)
    return config


def check_exports(exports: ExportsSection, src: str) -> None:
    for key in ("deny", "allow"):
        for i, rule in enumerate(getattr(exports, key)):
            if not (rule.startswith("/") or rule.startswith("~/")):
                raise ConfigError(
                    f"{src}: exports.{key}.{i}: {rule!r}: give an absolute path or one starting with ~/"
                )


def check_client_config(config: ClientConfig) -> None:
    src = config.source
    for key in ("public_key", "secret_key"):
        if not is_z85_key(getattr(config.client, key)):
            raise ConfigError(f"{src}: client.{key}: expected a 40-character Z85 CURVE key")
    check_exports(config.exports, src)
    for i, a in enumerate(config.appliances):
        _check_listen(a.address, f"{src}: appliances.{i}.address")
        if not is_z85_key(a.public_key):
            raise ConfigError(f"{src}: appliances.{i}.public_key: expected a Z85 CURVE key")


def dump_toml(config: Section) -> str:
    data = msgspec.to_builtins(config)
    data.pop("source", None)
    import tomli_w  # only when writing

    return tomli_w.dumps(data)


def save_client_config(config: ClientConfig, path: Path) -> None:
    """Written 0600: the file holds the client's secret key."""
    write_atomic(path, dump_toml(config), mode=0o600)
