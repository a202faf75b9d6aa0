"""Two-host test topology: a client and an appliance, each in its own network namespace.

The two namespaces are joined by a veth pair (MTU 1500) and, by default, both ends are
shaped like the Radium paper's TCP network with a token bucket (``tbf rate 4750mbit
burst 128kb latency 10ms``). ``netem`` is not available on the test machines, so no delay
is added: the veth round trip stays at tens of microseconds.

Naming and addressing
---------------------
* Namespaces are named ``{prefix}-{pid}-{N}-cli`` and ``{prefix}-{pid}-{N}-app``, where
  ``pid`` is the creating process (so :func:`cleanup_stale` can find dead owners) and
  ``N`` is the subnet index.
* The client end gets ``10.231.N.1/24``, the appliance end ``10.231.N.2/24``.
* ``N`` (1..254) is picked under a file lock so that it is not used by any namespace of
  this naming scheme that exists on the machine, whichever process made it;
  ``subnet_index`` overrides the choice.
* The veth pair is created directly inside the two namespaces (it never appears in the
  root namespace), with ends named ``rc{N}{pid%10000}`` / ``ra{N}{pid%10000}``.

Everything here needs root and iproute2 (``ip``, and ``tc`` when shaping);
:func:`can_create_namespaces` says whether that holds.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Host",
    "Topology",
    "can_create_namespaces",
    "cleanup_stale",
    "create_topology",
    "shaper",
    "topology",
]

SUBNET_PREFIX = "10.231"
MTU = 1500
# The bucket holds a whole TSO frame (64 KiB and its headers).  With less (64kb was used until
# 2026-12-08), tbf cuts every frame TCP hands it into 1,500-byte packets in software, on the
# sending thread, and the receiving end's TCP then handles each one: iperf3 at the link's rate
# kept 1.3 of this VM's 2 cores busy against 0.45 with a bigger bucket, the same rate.  No real
# link costs that (a NIC segments in hardware and coalesces what it receives); on two cores
# shared by both ends it was the largest cost of every byte radium moved (docs/run.md, "The
# lab's link").  The rate is unchanged: a burst of 128 KiB is 0.2 ms of the link.
TBF_BURST = "128kb"
TBF_LATENCY = "10ms"
RATE = "4750mbit"  # the Radium paper's TCP network
_COMMAND_TIMEOUT = 15.0  # seconds for any single ip/tc invocation
_LINK_WAIT = 5.0  # seconds link_up waits for both ends to report carrier

# {prefix}-{pid}-{N}-{role}; prefix may itself contain dashes.
_NAME_RE = re.compile(r"^(?P<prefix>.+)-(?P<pid>\d+)-(?P<index>\d+)-(?P<role>[a-z]+)$")

_process_lock = threading.Lock()
_open_topologies: weakref.WeakSet[Topology] = weakref.WeakSet()


# --------------------------------------------------------------------------- helpers


def shaper(rate: str = RATE) -> list[str]:
    """The qdisc that shapes a lab link, as `tc qdisc add dev X root` takes it."""
    return ["tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY]


def _run_ip(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run an iproute2 command; raise RuntimeError with the command and stderr on failure."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"command {' '.join(argv)!r} failed: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"command {' '.join(argv)!r} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (each line is ``name`` or ``name (id: N)``)."""
    out = _run_ip(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    """Delete a namespace; a missing one is not an error."""
    if name not in _list_namespaces():
        return
    proc = subprocess.run(
        ["ip", "netns", "delete", name],
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0 and name in _list_namespaces():
        raise RuntimeError(f"command 'ip netns delete {name}' failed: {proc.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_path() -> str:
    for folder in ("/run/lock", "/run", "/tmp"):
        if os.path.isdir(folder) and os.access(folder, os.W_OK):
            return os.path.join(folder, "radium-netns.lock")
    return "/tmp/radium-netns.lock"


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Serialise subnet choice + namespace creation within this process and across processes."""
    with _process_lock:
        fd = os.open(_lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _used_indices(names: Sequence[str]) -> set[int]:
    used: set[int] = set()
    for name in names:
        m = _NAME_RE.match(name)
        if m:
            used.add(int(m["index"]))
    return used


def _pick_index(pid: int, used: set[int]) -> int:
    # Start at a pid-dependent place so independent processes rarely even contend.
    start = pid % 254
    for k in range(254):
        n = (start + k) % 254 + 1
        if n not in used:
            return n
    raise RuntimeError(f"no free subnet in {SUBNET_PREFIX}.1-254.0/24: all in use")


# --------------------------------------------------------------------------- hosts


@dataclass
class Host:
    """One end of the topology: a network namespace with one veth interface."""

    name: str  # netns name
    address: str  # IPv4 address of its veth end, e.g. "10.231.7.2"
    interface: str  # veth name inside the namespace
    _children: list[subprocess.Popen] = field(default_factory=list, init=False, repr=False, compare=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the namespace. ``ip netns exec`` execs in place, so the
        returned process *is* the program (signals reach it directly). Processes still
        running when the topology is closed are terminated."""
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self._children = [p for p in self._children if p.poll() is None]
        self._children.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace to completion (``check=False`` unless given)."""
        kwargs.setdefault("check", False)
        return subprocess.run(self.command(argv), **kwargs)

    def _stop_children(self, timeout: float = 3.0) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1.0)
        self._children.clear()


# --------------------------------------------------------------------------- topology


@dataclass(eq=False)
class Topology:
    """A client and an appliance namespace joined by one (optionally shaped) veth pair."""

    client: Host
    appliance: Host
    subnet_index: int = -1
    rate: str | None = None
    closed: bool = field(default=False, init=False)

    def _set_link(self, state: str) -> None:
        for host in (self.client, self.appliance):
            _run_ip(["ip", "-n", host.name, "link", "set", "dev", host.interface, state])

    def link_down(self) -> None:
        """Set both veth ends down: the hosts can no longer reach each other."""
        self._set_link("down")

    def link_up(self) -> None:
        """Set both veth ends up again and wait (bounded) until both carry traffic."""
        self._set_link("up")
        deadline = time.monotonic() + _LINK_WAIT
        while True:
            if all(self._lower_up(h) for h in (self.client, self.appliance)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"veth link did not come up within {_LINK_WAIT} s")
            time.sleep(0.01)

    @staticmethod
    def _lower_up(host: Host) -> bool:
        out = _run_ip(["ip", "-n", host.name, "-o", "link", "show", "dev", host.interface])
        flags = out.stdout.split("<", 1)[-1].split(">", 1)[0].split(",")
        return "UP" in flags and "LOWER_UP" in flags

    def close(self) -> None:
        """Stop processes started through the hosts and delete both namespaces (which
        removes the veth pair). Safe to call more than once."""
        if self.closed:
            return
        for host in (self.client, self.appliance):
            host._stop_children()
        errors = []
        for host in (self.client, self.appliance):
            try:
                _delete_namespace(host.name)
            except RuntimeError as exc:
                errors.append(str(exc))
        self.closed = True
        _open_topologies.discard(self)
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def create_topology(
    prefix: str = "rdm", rate: str | None = RATE, subnet_index: int | None = None
) -> Topology:
    """Create two namespaces (client, appliance) joined by a veth pair in 10.231.N.0/24.

    ``rate`` shapes both veth ends with tbf (None: unshaped). ``subnet_index`` forces N.
    On any failure everything made so far is removed and RuntimeError is raised, naming
    the command that failed and its stderr.
    """
    if subnet_index is not None and not 1 <= subnet_index <= 254:
        raise ValueError(f"subnet_index must be in 1..254, got {subnet_index}")
    if "/" in prefix or not prefix:
        raise ValueError(f"bad namespace prefix {prefix!r}")
    pid = os.getpid()
    made: list[str] = []
    try:
        with _allocation_lock():
            existing = _list_namespaces()
            n = subnet_index if subnet_index is not None else _pick_index(pid, _used_indices(existing))
            cli_ns, app_ns = f"{prefix}-{pid}-{n}-cli", f"{prefix}-{pid}-{n}-app"
            for ns in (cli_ns, app_ns):
                if ns in existing:
                    raise RuntimeError(f"namespace {ns} already exists (subnet index {n} in use)")
                _run_ip(["ip", "netns", "add", ns])
                made.append(ns)
        tag = f"{n}{pid % 10000}"
        client = Host(name=cli_ns, address=f"{SUBNET_PREFIX}.{n}.1", interface=f"rc{tag}")
        appliance = Host(name=app_ns, address=f"{SUBNET_PREFIX}.{n}.2", interface=f"ra{tag}")
        _run_ip(
            [
                "ip",
                "link",
                "add",
                "name",
                client.interface,
                "netns",
                cli_ns,
                "mtu",
                str(MTU),
                "type",
                "veth",
                "peer",
                "name",
                appliance.interface,
                "netns",
                app_ns,
                "mtu",
                str(MTU),
            ]
        )
        for host in (client, appliance):
            _run_ip(["ip", "-n", host.name, "link", "set", "dev", "lo", "up"])
            _run_ip(["ip", "-n", host.name, "addr", "add", f"{host.address}/24", "dev", host.interface])
            if rate is not None:
                _run_ip(
                    [
                        "tc",
                        "-n",
                        host.name,
                        "qdisc",
                        "add",
                        "dev",
                        host.interface,
                        "root",
                        *shaper(rate),
                    ]
                )
        topo = Topology(client=client, appliance=appliance, subnet_index=n, rate=rate)
        topo.link_up()
    except BaseException:
        for ns in made:
            with contextlib.suppress(Exception):
                _delete_namespace(ns)
        raise
    _open_topologies.add(topo)
    return topo


@contextlib.contextmanager
def topology(
    prefix: str = "rdm", rate: str | None = RATE, subnet_index: int | None = None
) -> Iterator[Topology]:
    """``with topology() as t:`` — a :func:`create_topology` closed on exit."""
    topo = create_topology(prefix=prefix, rate=rate, subnet_index=subnet_index)
    try:
        yield topo
    finally:
        topo.close()


@atexit.register
def _close_leftovers() -> None:
    for topo in list(_open_topologies):
        with contextlib.suppress(Exception):
            topo.close()


# --------------------------------------------------------------------------- checks


@functools.cache
def _probe(need_tc: bool) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "network namespaces need root (euid is not 0)"
    if shutil.which("ip") is None:
        return False, "iproute2 `ip` is not installed"
    if need_tc and shutil.which("tc") is None:
        return False, "iproute2 `tc` is not installed (needed to shape the link)"
    name = f"rdm-{os.getpid()}-0-probe"
    try:
        _run_ip(["ip", "netns", "add", name])
    except RuntimeError as exc:
        return False, f"cannot create a network namespace: {exc}"
    try:
        _run_ip(["ip", "-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])
        if need_tc:
            _run_ip(
                [
                    "tc",
                    "-n",
                    name,
                    "qdisc",
                    "add",
                    "dev",
                    "pa",
                    "root",
                    *shaper(),
                ]
            )
    except RuntimeError as exc:
        return False, f"veth/tbf unavailable: {exc}"
    finally:
        with contextlib.suppress(Exception):
            _delete_namespace(name)
    return True, ""


def can_create_namespaces(need_tc: bool = True) -> tuple[bool, str]:
    """(True, "") when this process can build a topology, else (False, why not).

    Checks root, ``ip`` (and ``tc`` with tbf when ``need_tc``), and actually creates and
    deletes a probe namespace with a veth pair. The answer is cached per process.
    """
    return _probe(need_tc)


def cleanup_stale(prefix: str = "rdm") -> list[str]:
    """Delete namespaces named ``{prefix}-{pid}-...`` whose owner pid is no longer alive.

    Returns the names deleted. Processes still running inside such a namespace are not
    touched (they keep the namespace alive until they exit, but its name is freed).
    """
    deleted = []
    for name in _list_namespaces():
        m = _NAME_RE.match(name)
        if not m or m["prefix"] != prefix:
            continue
        if _pid_alive(int(m["pid"])):
            continue
        _delete_namespace(name)
        deleted.append(name)
    return deleted
