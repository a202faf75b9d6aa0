"""The one wire schema: every message the appliance and its clients exchange.

Messages are msgspec structs tagged by their `kind`; a frame body decodes to
exactly one of `Request`, `Reply` or `Notice`.  The data model shared by the
daemon, the CLI, the TUI and Ansible (devices, leases) lives here too, so that
there is one definition of each concept.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Raised whenever a message (or the file protocol, run/fsproto.py) changes so that an older
# peer would refuse it: the Hello then says "upgrade the older side" instead of a run failing
# on "malformed file request". 2: ReadChunks.framed and Chunks.framed. 3: RunDirect.
PROTOCOL_VERSION = 3


class Model(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for plain data records."""


class Message(msgspec.Struct, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    """Base for everything that crosses the wire as a frame body."""


# --- the data model ----------------------------------------------------------

Health = Literal["ok", "failed", "unknown"]


class Device(Model):
    """One accelerator as the appliance knows it."""

    id: str  # stable across restarts: backend + platform + PCI address or index
    backend: str  # "opencl", "nvml", ...
    vendor: str
    model: str
    memory_bytes: int
    pci_address: str | None = None
    compute_units: int | None = None
    health: Health = "unknown"
    health_detail: str = ""


class LeasePart(Model):
    """The share of one device that a lease holds."""

    device_id: str
    memory_bytes: int
    fraction: float  # memory_bytes / device memory; 1.0 for a whole device


class Lease(Model):
    id: str
    client: str
    server: str
    parts: list[LeasePart]
    granted_at: float

    @property
    def device_ids(self) -> list[str]:
        return [p.device_id for p in self.parts]


class LeaseHolding(Model):
    """A lease as shown against one device (for `smi`)."""

    lease_id: str
    client: str
    memory_bytes: int
    fraction: float


class DeviceStatus(Model):
    device: Device
    memory_allocated_bytes: int
    memory_used_bytes: int | None = None  # as reported by the backend, where it can
    utilization_percent: float | None = None
    leases: list[LeaseHolding] = []


class RunInfo(Model):
    """A process carried to the appliance (`radium run`), as operators see it."""

    id: str
    argv: list[str]  # the command, its first words (ARGV_SHOWN) with each word cut at 200 characters
    lease_id: str
    started_at: float  # seconds since the epoch, the appliance's clock


ARGV_SHOWN = 16


class SessionInfo(Model):
    """A client's session on the appliance: what it holds and runs."""

    id: str
    client: str
    client_host: str
    client_version: str
    opened_at: float  # seconds since the epoch, the appliance's clock
    idle_s: float  # since its last message (heartbeats every few seconds keep this small)
    leases: list[Lease] = []
    runs: list[RunInfo] = []


class ServerInfo(Model):
    name: str
    hostname: str
    version: str
    protocol: int = PROTOCOL_VERSION


class Filter(Model):
    """`key op value`, e.g. device.name=Tesla, device.memory>=16000."""

    key: str
    op: Literal["=", "!=", "<", "<=", ">", ">=", "~"]
    value: str


class AllocationRequest(Model):
    count: int = 1
    fraction: float | None = None  # share of each device's memory, 0 < f <= 1
    memory_mib: int | None = None  # or an amount of memory per device
    filters: list[Filter] = []


# --- requests -----------------------------------------------------------------


class Hello(Message, tag="hello"):
    protocol: int
    client_version: str
    hostname: str = ""


class Heartbeat(Message, tag="heartbeat"):
    session: str


class Bye(Message, tag="bye"):
    session: str


class ListDevices(Message, tag="list-devices"):
    usage: bool = False


class Acquire(Message, tag="acquire"):
    session: str
    request: AllocationRequest
    timeout: float = 0.0  # seconds to wait in the queue; 0 fails at once


class Release(Message, tag="release"):
    session: str
    lease_id: str


class CheckHealth(Message, tag="check-health"):
    pass


class Enroll(Message, tag="enroll"):
    """Authorise a client key (admins only)."""

    name: str
    public_key: str  # Z85
    role: Literal["client", "admin"] = "client"


class Revoke(Message, tag="revoke"):
    name: str
    role: Literal["client", "admin"] = "client"


class ListSessions(Message, tag="list-sessions"):
    """Every open session with its leases and runs (admins only)."""


class EndSession(Message, tag="end-session"):
    """End a client's session: its runs are killed, its leases released, its client told (admins only)."""

    session: str
    reason: str = ""


class RunStart(Message, tag="run-start"):
    """Carry a process to this appliance (`radium run`).

    Either `lease_id` names a lease the client already holds (a reservation), or
    `request` is allocated for this run alone and released when it ends.
    """

    session: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    uid: int
    gid: int
    lease_id: str | None = None
    request: AllocationRequest | None = None
    timeout: float = 0.0
    umask: int = 0o022
    tty: bool = False
    rows: int = 24
    cols: int = 80
    prefetch: list[str] = []  # trees whose listings the appliance asks for in one round trip
    memory: Annotated[int, msgspec.Meta(ge=0)] = (
        0  # bytes of the appliance's memory asked, swap included (0: its default)
    )


# Run traffic from the client, forwarded to the run's supervisor; never answered.
class RunInput(Message, tag="run-input"):
    run: str
    eof: bool = False  # the data travels in the frame after the body


class RunSignal(Message, tag="run-signal"):
    run: str
    signal: int


class RunResize(Message, tag="run-resize"):
    run: str
    rows: int
    cols: int


MIN_CREDIT = 4096


def credit_cost(size: int) -> int:
    """What a credited message (output, write-back) costs of the window: its size, but at
    least MIN_CREDIT, so that the messages in flight stay few (a 16 MiB window holds at
    most 4,096) whatever their size: radiumd's queue to a client never overflows with
    them (it would drop one, and its output and credit with it), and a process printing
    a line at a time cannot pile millions of messages up in the client."""
    return max(size, MIN_CREDIT)


class RunCredit(Message, tag="run-credit"):
    """The client consumed `bytes` of credit (`credit_cost` of each message it handled):
    the appliance may send that much more."""

    run: str
    bytes: int


class FsAnswer(Message, tag="fs-answer"):
    run: str
    id: int  # the file-protocol reply travels in the frame after the body


class WritebackAck(Message, tag="writeback-ack"):
    run: str
    ok: bool
    error: str = ""


RunTraffic = RunInput | RunSignal | RunResize | RunCredit | FsAnswer | WritebackAck

Request = (
    Hello
    | Heartbeat
    | Bye
    | ListDevices
    | Acquire
    | Release
    | CheckHealth
    | Enroll
    | Revoke
    | ListSessions
    | EndSession
    | RunStart
    | RunInput
    | RunSignal
    | RunResize
    | RunCredit
    | FsAnswer
    | WritebackAck
)


# --- replies -------------------------------------------------------------------


class Welcome(Message, tag="welcome"):
    server: ServerInfo
    session: str
    client: str
    heartbeat_interval: float
    lease_timeout: float


class Ok(Message, tag="ok"):
    pass


class DeviceList(Message, tag="device-list"):
    server: ServerInfo
    devices: list[DeviceStatus]
    queue_length: int = 0


class Granted(Message, tag="granted"):
    lease: Lease


class HealthReport(Message, tag="health-report"):
    server: ServerInfo
    devices: list[Device]
    client: str


class SessionList(Message, tag="session-list"):
    server: ServerInfo
    sessions: list[SessionInfo]


class Error(Message, tag="error"):
    code: str
    message: str
    detail: dict[str, Any] = {}


class RunAccepted(Message, tag="run-accepted"):
    run: str
    lease: Lease
    hostname: str


Reply = Welcome | Ok | DeviceList | Granted | HealthReport | SessionList | Error | RunAccepted


# --- notices: sent by the appliance unasked ------------------------------------


class Shutdown(Message, tag="shutdown"):
    server: str
    reason: str


class LeaseLost(Message, tag="lease-lost"):
    """A lease of the client's session was taken away (an operator ended the session)."""

    lease_id: str
    reason: str


class RunOutput(Message, tag="run-output"):
    run: str
    fd: int  # 1 or 2; the data travels in the frame after the body


class FsCall(Message, tag="fs-call"):
    run: str
    id: int  # the file-protocol request travels in the frame after the body


class RunDirect(Message, tag="run-direct"):
    """The run's supervisor offers a direct file channel (run/direct.py): connect to `port`
    of the appliance's address and prove `key`; file requests then come that way."""

    run: str
    port: int
    key: bytes  # one-time, 32 bytes: a secret, never logged


class Change(Model):
    """One change the process made under a client path, to apply on the client."""

    kind: Literal["file", "dir", "symlink", "delete"]
    path: str
    mode: int = 0
    mtime_ns: int = 0
    target: str = ""  # symlinks
    size: int = 0  # files: the content follows in WritebackData messages
    opaque: bool = False  # directories: replaces the client's directory, not merged into it


class Writeback(Message, tag="writeback"):
    run: str
    change: Change


class WritebackData(Message, tag="writeback-data"):
    run: str
    path: str
    offset: int
    last: bool  # the data travels in the frame after the body


class WritebackEnd(Message, tag="writeback-end"):
    run: str
    changes: int


class RunStats(Model):
    fs_requests: int = 0
    bytes_fetched: int = 0
    fs_direct: int = 0  # of fs_requests, those answered over the direct file channel
    fuse_ops: int = 0  # file system operations the appliance answered in Python (FUSE)
    warm_files: int = 0  # files the client's warm tree offered the run (kernel-served)
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_written_back: int = 0
    output_bytes: int = 0
    phases: dict[str, float] = {}
    # Where file content's time went on the appliance, seconds (overlapping, not consecutive):
    # readers waiting for it ("wait"), verifying it ("verify"), storing it ("store", background).
    content_seconds: dict[str, float] = {}


class RunExit(Message, tag="run-exit"):
    run: str
    status: int  # as a shell reports it: the exit code, or 128+N for signal N
    detail: str = ""
    stats: RunStats = msgspec.field(default_factory=RunStats)


Notice = (
    Shutdown | LeaseLost | RunOutput | FsCall | RunDirect | Writeback | WritebackData | WritebackEnd | RunExit
)

AnyMessage = Request | Reply | Notice
