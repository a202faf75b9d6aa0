"""A vCenter API for tests and the lab: govmomi's vCenter simulator with GPU hosts.

``main.go`` (next to this file) is a small Go program around the ``simulator``
package of govmomi as Debian ships it (``golang-github-vmware-govmomi-dev``,
built with Debian's ``golang-go`` in GOPATH mode, offline).  Its hosts carry
NVIDIA Tesla V100 / AMD Instinct MI100 PCI devices, and it adds the vCenter
behaviour Radium relies on (per-host PCI passthrough system, passthrough
targets in ``QueryConfigTarget``, unique VM names per folder, the passthrough
power-on rules); ``main.go``'s header documents the inventory and every rule.

    from radium.vcenter import sim

    with sim.start(clusters=1, hosts_per_cluster=2, gpus_per_host=4) as vc:
        si = SmartConnect(**vc.connect_args(), disableSslCertValidation=True)

:func:`build` compiles the program once into a cache folder (``RADIUM_VCSIM_CACHE``,
default ``~/.cache/radium/vcsim``) and rebuilds only when ``main.go``, the Go
toolchain or the govmomi source changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "APT_PACKAGES",
    "Simulator",
    "VcsimError",
    "VcsimUnavailable",
    "build",
    "default_cache_dir",
    "missing",
    "start",
]

#: Debian packages that provide what :func:`build` needs.
APT_PACKAGES = ("golang-go", "golang-github-vmware-govmomi-dev")

SOURCE = Path(__file__).with_name("main.go")
GOCODE = Path("/usr/share/gocode")  # Debian's GOPATH for packaged Go source
GOVMOMI = GOCODE / "src/github.com/vmware/govmomi"
BINARY = "radium-vcsim"
BUILD_TIMEOUT = 900.0


class VcsimUnavailable(RuntimeError):
    """The simulator cannot be built here: a prerequisite is missing."""


class VcsimError(RuntimeError):
    """The simulator failed to build or to start."""


def default_cache_dir() -> Path:
    """``$RADIUM_VCSIM_CACHE``, else ``~/.cache/radium/vcsim``."""
    env = os.environ.get("RADIUM_VCSIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radium" / "vcsim"


def _go() -> str | None:
    return shutil.which("go")


def missing() -> list[str]:
    """What prevents building the simulator here (empty when nothing does)."""
    problems = []
    if _go() is None:
        problems.append("the Go toolchain (`go`) is not on PATH")
    if not (GOVMOMI / "simulator" / "simulator.go").is_file():
        problems.append(f"govmomi's Go source is not under {GOVMOMI}")
    elif not (GOCODE / "src/github.com/google/uuid").is_dir():
        problems.append(f"github.com/google/uuid's Go source is not under {GOCODE}")
    if problems:
        problems.append("install them with: apt-get install " + " ".join(APT_PACKAGES))
    return problems


def _source_stamp(go: str) -> str:
    """Identity of what the binary is built from: main.go, the Go toolchain, govmomi."""
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60, check=False)
    h.update(f"{go}\0{version.stdout}".encode())
    for pkg in ("simulator", "simulator/esx", "simulator/vpx", "vim25/types", "vim25/methods", "vim25/mo"):
        for f in sorted((GOVMOMI / pkg).glob("*.go")):
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(cache_dir: Path | None = None) -> Path:
    """Return the simulator binary, compiling it first when missing or out of date.

    The build happens in ``cache_dir`` (GOPATH folder, GOCACHE and the binary),
    under a lock, so concurrent callers build once.  A cold build compiles the
    Go standard library too and takes about a minute; later calls only hash
    ``main.go`` and compare with the stamp written next to the binary.
    """
    problems = missing()
    if problems:
        raise VcsimUnavailable("cannot build the vCenter simulator: " + "; ".join(problems))
    go = _go()
    assert go is not None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / BINARY
    stamp_file = cache / f"{BINARY}.stamp"
    stamp = _source_stamp(go)

    with _locked(cache / ".lock"):
        if binary.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
            return binary
        src = cache / "gopath" / "src" / "radiumsim"
        src.mkdir(parents=True, exist_ok=True)
        (src / "main.go").write_bytes(SOURCE.read_bytes())
        tmp = cache / f".{BINARY}.{os.getpid()}.tmp"
        env = dict(
            os.environ,
            GO111MODULE="off",
            GOPATH=f"{cache / 'gopath'}{os.pathsep}{GOCODE}",
            GOPROXY="off",
            GOFLAGS="",
            GOENV="off",
            CGO_ENABLED="0",
            GOCACHE=str(cache / "gocache"),
        )
        try:
            proc = subprocess.run(
                [go, "build", "-o", str(tmp), "."],
                cwd=src,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            tmp.unlink(missing_ok=True)
            raise VcsimError(f"`go build` of the vCenter simulator took over {BUILD_TIMEOUT:.0f} s") from e
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise VcsimError(
                f"`go build` of the vCenter simulator failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}".rstrip()
            )
        os.replace(tmp, binary)
        stamp_tmp = stamp_file.with_name(stamp_file.name + ".tmp")
        stamp_tmp.write_text(stamp)
        os.replace(stamp_tmp, stamp_file)
    return binary


@dataclass
class Simulator:
    """A running simulator; ``stop()`` it, or use it as a context manager."""

    url: str  #: https://USER:PASSWORD@127.0.0.1:PORT/sdk
    host: str
    port: int
    username: str
    password: str
    process: subprocess.Popen = field(repr=False)
    workdir: Path = field(repr=False)

    @property
    def sdk_url(self) -> str:
        """The SDK URL without credentials."""
        return f"https://{self.host}:{self.port}/sdk"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed the server's certificate (for clients that verify TLS)."""
        return self.workdir / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "vcsim.log"

    def connect_args(self) -> dict[str, object]:
        """Keyword arguments for pyVmomi's ``SmartConnect`` (add ``disableSslCertValidation=True``)."""
        return {"host": self.host, "port": self.port, "user": self.username, "pwd": self.password}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the simulator (SIGTERM, then SIGKILL after ``timeout``) and remove its folder."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    *,
    clusters: int = 1,
    hosts_per_cluster: int = 2,
    standalone_hosts: int = 1,
    gpus_per_host: int = 4,
    vms: int = 1,
    username: str | None = None,
    password: str | None = None,
    cache_dir: Path | None = None,
    timeout: float = 30.0,
) -> Simulator:
    """Build (when needed) and start a simulator; return once it serves.

    The inventory is one datacenter ``DC0`` with ``clusters`` clusters of
    ``hosts_per_cluster`` hosts, ``standalone_hosts`` standalone hosts and
    ``vms`` powered-on VMs per cluster / standalone host; every host has
    ``gpus_per_host`` GPUs (see main.go for the vendor and passthrough pattern).
    The server's certificate is signed by a CA made at start-up: ``ca_file``.
    With ``username``/``password`` only those credentials log in; otherwise any
    non-empty pair does (the URL then carries ``user``/``pass``).
    """
    if (username is None) != (password is None):
        raise ValueError("username and password go together")
    binary = build(cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix="radium-vcsim-"))
    url_file = workdir / "url"
    args = [
        str(binary),
        f"-clusters={clusters}",
        f"-hosts-per-cluster={hosts_per_cluster}",
        f"-standalone-hosts={standalone_hosts}",
        f"-gpus-per-host={gpus_per_host}",
        f"-vms={vms}",
        f"-url-file={url_file}",
        f"-ca-file={workdir / 'ca.pem'}",
        "-exit-on-stdin-eof",  # gone with its parent, even one killed hard
    ]
    env = dict(os.environ)
    env.pop("VCSIM_PASSWORD", None)
    if username is not None:
        # The password through the environment: a command line is every local user's to read.
        args.append(f"-username={username}")
        env["VCSIM_PASSWORD"] = password or ""
    with open(workdir / "vcsim.log", "wb") as log:
        proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )

    def fail(why: str) -> VcsimError:
        partial = Simulator("", "", 0, "", "", proc, workdir)
        tail = "\n".join(partial.log().splitlines()[-20:])
        partial.stop()
        return VcsimError(f"the vCenter simulator {why}" + (f"; its log ends:\n{tail}" if tail else ""))

    deadline = time.monotonic() + timeout
    while not url_file.exists():
        if proc.poll() is not None:
            raise fail(f"exited with status {proc.returncode} before serving")
        if time.monotonic() > deadline:
            raise fail(f"did not serve within {timeout:g} s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.02)  # wakes at once if it exits
    url = url_file.read_text().strip()
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return Simulator(
        url=url,
        host=parts.hostname,
        port=parts.port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        process=proc,
        workdir=workdir,
    )
