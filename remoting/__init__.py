"""Radium's data plane, as the other folders see it: this module's names are its whole public face.

    from radium import remoting

    config = remoting.load_client_config()                  # the one client configuration model
    for r in asyncio.run(remoting.list_devices(config)):    # the client API: every appliance at once
        print(r.appliance.name, r.error or [d.device.model for d in r.value.devices])
    done = remoting.enroll("vm1", "gpu1")                   # an operator action: key, authorisation, bundle

`radium-admin`, the console, the Ansible modules, the appliance's first boot and
the lab use the data plane through these names only (tests/test_faces.py checks
the import graph); what is behind them (`_config`, `_keys`, `daemon/`, `run/`,
`cli/`, ...) may change without notice.  The wire protocol's own modules,
`schema` (the messages) and `wire` (their framing), are public for the
benchmarks that measure it.  Names are imported on first use, so that
importing this package costs nothing: `radium run` starts through it.

- **version**: `VERSION`, `PROTOCOL_VERSION`;
- **errors**: `RadiumError` and its tree (each with a wire `code` and an `exit_code`);
- **configuration**: the client's (`ClientConfig` ...) and radiumd's (`DaemonConfig`), loaded and
  saved with their validation, and the TOML model machinery other folders' files share
  (`Section`, `load_toml`, `convert`, `dump_toml`, `explain_validation`);
- **keys**: CURVE key pairs, key folders, atomic 0600 writes, names;
- **enrolment**: `enroll` / `revoke` (the operator actions) and the pieces they are made of;
- **guestinfo**: the module of the `guestinfo.radium.*` contract with client VMs;
- **the client API**: `list_devices`, `check_health`, `reserve` (fan-out over appliances), the
  operator's `list_sessions` / `survey` / `end_session`, and the shared data model they answer
  with (`Device`, `DeviceStatus`, `Lease`, `SessionInfo`, ...);
- **output**: `Result`, `emit`, `emit_error`: how both command lines print a result or an error.
"""

from .exports import lazy

TYPE_CHECKING = False  # not typing's: importing typing costs `radium run` ~8 ms (mypy reads the name)

_ERRORS = (
    "AllocationError",
    "ApplianceShutdown",
    "AuthError",
    "ConfigError",
    "LeaseNotFound",
    "MessageTooLarge",
    "NotAvailable",
    "NotPermitted",
    "ProtocolError",
    "RadiumError",
    "RemoteError",
    "SessionExpired",
    "TransportError",
    "Unsatisfiable",
    "UsageError",
)
_CONFIG = (
    "DEFAULT_PORT",
    "ApplianceEntry",
    "ClientConfig",
    "ClientSection",
    "DaemonConfig",
    "Section",
    "check_client_config",
    "client_config_path",
    "convert",
    "dump_toml",
    "explain_validation",
    "lab_profile_dir",
    "load_client_config",
    "load_daemon_config",
    "load_toml",
    "save_client_config",
)
_KEYS = (
    "NAME_RE",
    "KeyDirectory",
    "KeyPair",
    "check_name",
    "is_z85_key",
    "load_keypair",
    "save_keypair",
    "save_public_key",
    "write_atomic",
)
_ENROLMENT = (
    "ROLES",
    "Enrolment",
    "Revocation",
    "admin_config_path",
    "enroll",
    "enroll_many",
    "find_appliance",
    "forget_appliance",
    "is_enrolled",
    "load_admin_config",
    "new_identity",
    "operator_identity",
    "record_appliance",
    "revoke",
    "revoke_many",
)
_MODEL = (
    "AllocationRequest",
    "Device",
    "DeviceList",
    "DeviceStatus",
    "Filter",
    "HealthReport",
    "Lease",
    "LeaseHolding",
    "LeasePart",
    "PROTOCOL_VERSION",
    "RunInfo",
    "ServerInfo",
    "SessionInfo",
    "SessionList",
)

_CLIENT_API = (
    "PerAppliance",
    "Reservation",
    "Survey",
    "check_health",
    "end_session",
    "list_devices",
    "list_sessions",
    "reserve",
    "survey",
)

EXPORTS: dict[str, str] = {
    "VERSION": "._version",
    **dict.fromkeys(_ERRORS, "._errors"),
    **dict.fromkeys(_CONFIG, "._config"),
    **dict.fromkeys(_KEYS, "._keys"),
    **dict.fromkeys(_ENROLMENT, ".enrolment"),
    "guestinfo": ".guestinfo:",
    **dict.fromkeys(_MODEL, ".schema"),
    "parse_filter": "._filters",
    "undriven_gpus": ".devices.pci:undriven",
    "validate_request": "._allocator",
    **dict.fromkeys(_CLIENT_API, ".client.api"),
    **dict.fromkeys(("Result", "emit", "emit_error"), ".output"),
    "lazy_exports": ".exports:lazy",
}

__getattr__, __dir__ = lazy(__name__, EXPORTS)
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:
    from . import guestinfo
    from ._allocator import validate_request
    from ._config import (
        DEFAULT_PORT,
        ApplianceEntry,
        ClientConfig,
        ClientSection,
        DaemonConfig,
        Section,
        check_client_config,
        client_config_path,
        convert,
        dump_toml,
        explain_validation,
        lab_profile_dir,
        load_client_config,
        load_daemon_config,
        load_toml,
        save_client_config,
    )
    from ._errors import (
        AllocationError,
        ApplianceShutdown,
        AuthError,
        ConfigError,
        LeaseNotFound,
        MessageTooLarge,
        NotAvailable,
        NotPermitted,
        ProtocolError,
        RadiumError,
        RemoteError,
        SessionExpired,
        TransportError,
        Unsatisfiable,
        UsageError,
    )
    from ._filters import parse_filter
    from ._keys import (
        NAME_RE,
        KeyDirectory,
        KeyPair,
        check_name,
        is_z85_key,
        load_keypair,
        save_keypair,
        save_public_key,
        write_atomic,
    )
    from ._version import VERSION
    from .client.api import (
        PerAppliance,
        Reservation,
        Survey,
        check_health,
        end_session,
        list_devices,
        list_sessions,
        reserve,
        survey,
    )
    from .devices.pci import undriven as undriven_gpus
    from .enrolment import (
        ROLES,
        Enrolment,
        Revocation,
        admin_config_path,
        enroll,
        enroll_many,
        find_appliance,
        forget_appliance,
        is_enrolled,
        load_admin_config,
        new_identity,
        operator_identity,
        record_appliance,
        revoke,
        revoke_many,
    )
    from .exports import lazy as lazy_exports
    from .output import Result, emit, emit_error
    from .schema import (
        PROTOCOL_VERSION,
        AllocationRequest,
        Device,
        DeviceList,
        DeviceStatus,
        Filter,
        HealthReport,
        Lease,
        LeaseHolding,
        LeasePart,
        RunInfo,
        ServerInfo,
        SessionInfo,
        SessionList,
    )
