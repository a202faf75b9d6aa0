"""`radium-admin appliance build`: the appliance image, built from source into a bootable OVA.

The steps, each reported as it starts and ends, each failure naming its step:

 1. tools        what the build runs is installed (mmdebstrap, mkfs, mtools, sfdisk, qemu-img)
 2. wheels       radium[appliance] and its dependencies as wheels, from this checkout
 3. system       a minimal Debian (mmdebstrap from Debian's archive): kernel, systemd,
                 OpenSSH, open-vm-tools, the OpenCL loader (and PoCL with `with_pocl`),
                 systemd-boot; the downloaded packages kept in a cache for the next build
 4. radium       radium in /opt/radium (its own virtual environment), the units of
                 `units/` enabled, SSH hardened
 5. hooks        the operator's scripts (GPU drivers: NVIDIA's and AMD's are not redistributed),
                 then the image's record of what it holds (version, packages)
 6. disk         a GPT disk: an EFI system partition (systemd-boot, the kernel) and the root
                 file system (ext4), written from the folder without mounting anything
 7. vmdk         the disk as a stream-optimized VMDK (qemu-img)
 8. ova          the OVF descriptor with the real disk's sizes, a SHA-256 manifest, packed
                 into an OVA (descriptor first) and checked as a deploy checks it

Everything is made in a work folder beside the output, removed at the end whatever happens;
the OVA appears only when complete (written aside, then renamed).  See appliance/README.md ("The
image") for what the image holds and why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote

from radium.remoting import VERSION, RadiumError

from . import ovf

#: Debian suites the image is built from, and the Python each has (the wheels must match it).
SUITES = {"bookworm": (3, 11), "trixie": (3, 13)}
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "zstd", "systemd", "systemd-sysv", "systemd-resolved",
    "systemd-boot-efi", "udev", "dbus", "kmod", "iproute2", "ca-certificates", "eject",
    "openssh-server", "open-vm-tools", "ocl-icd-libopencl1", "python3", "python3-venv", "fuse3",
    "uidmap", "tini", "e2fsprogs",
)  # fmt: skip
POCL = ("pocl-opencl-icd",)
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "qemu-img": "qemu-utils",
}
ESP_MIB = 256  # systemd-boot, one kernel and its initrd (MODULES=most: every storage driver)
ROOT_LABEL = "radium-root"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # GPT: EFI system partition
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # GPT: Linux root (x86-64)
# Left out of the image: manual pages, documentation (but the copyright files) and translations.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
SSHD_CONFIG = """\
# The Radium appliance: keys only (from the radium.ssh_authorized_keys property), no passwords.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""
SSH_DROP_IN = """\
# The Radium appliance: SSH only for the keys given at deploy (radium.ssh_authorized_keys);
# without any, sshd does not start. Host keys are made at the first start: each appliance its own.
[Unit]
ConditionFileNotEmpty=/root/.ssh/authorized_keys

[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""


class BuildError(RadiumError):
    """A step of the build failed; the message names the step and why."""

    code = "build_failed"
    exit_code = 1


@dataclass
class BuildRequest:
    output: Path = Path("radium-appliance.ova")
    suite: str = "bookworm"
    disk_gib: int = 16
    with_pocl: bool = False
    extra_packages: list[str] = field(default_factory=list)
    hooks: list[Path] = field(default_factory=list)  #: run with the image's root folder as $1
    mirror: str = MIRROR
    cache: Path | None = None  #: downloaded packages and wheels (default ~/.cache/radium/appliance-build)
    source: Path | None = None  #: the checkout radium is built from (default: the one this runs from)

    @property
    def name(self) -> str:
        return self.output.name.removesuffix(".ova")

    def check(self) -> None:
        problems = []
        if self.suite not in SUITES:
            problems.append(f"--suite {self.suite}: one of {', '.join(SUITES)}")
        if not 4 <= self.disk_gib <= 2048:
            problems.append(f"--disk-size {self.disk_gib}: between 4 and 2048 GiB")
        if self.output.suffix.lower() != ".ova":
            problems.append(f"--output {self.output}: an .ova file")
        elif not self.output.parent.resolve().is_dir():
            problems.append(f"--output {self.output}: its folder {self.output.parent} does not exist")
        for package in self.extra_packages:
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", package):
                problems.append(f"--extra-packages: {package!r} is not a Debian package name")
        for hook in self.hooks:
            if not (hook.is_file() and os.access(hook, os.X_OK)):
                problems.append(f"--hook {hook}: not an executable file")
        if problems:
            raise BuildError("cannot build: " + "; ".join(problems))


@dataclass
class BuildResult:
    output: str
    size: int  #: bytes of the OVA
    disk_gib: int
    version: str
    suite: str
    packages: int  #: Debian packages in the image
    steps: dict[str, float]  #: seconds each step took
    reused_packages: int  #: packages that came from the cache, not the archive

    def summary(self) -> str:
        mb = self.size / 1e6
        took = sum(self.steps.values())
        return (
            f"built {self.output}: {mb:.0f} MB, Radium {self.version} on Debian {self.suite} "
            f"({self.packages} packages, {self.reused_packages} from the cache), disk {self.disk_gib} GiB, "
            f"in {took:.0f} s"
        )


Progress = Callable[[str], None]


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "radium" / "appliance-build"


def source_checkout() -> Path:
    """The checkout this radium runs from (where pyproject.toml is), to build its wheel."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and (here / "appliance").is_dir():
        return here
    raise BuildError(
        "this radium is installed, not a source checkout: build the image from a checkout "
        "(./dev setup, then .venv/bin/radium-admin appliance build)"
    )


def _run(step: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    except OSError as exc:
        raise BuildError(f"step {step}: {argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-12:]
        raise BuildError(
            f"step {step}: {' '.join(argv[:3])}... failed (exit {done.returncode}):\n  " + "\n  ".join(said)
        )
    return done


# --- the steps --------------------------------------------------------------------------------------


def check_tools() -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"step tools: not installed: {', '.join(missing)}; ./dev setup installs them")
    if os.geteuid() != 0:
        raise BuildError("step tools: run as root: mmdebstrap makes the image's files with their owners")


def build_wheels(request: BuildRequest, source: Path, out: Path) -> None:
    want = SUITES[request.suite]
    if sys.version_info[:2] != want:
        raise BuildError(
            f"step wheels: Debian {request.suite} has Python {want[0]}.{want[1]}, this is "
            f"{sys.version_info[0]}.{sys.version_info[1]}: build with a Python {want[0]}.{want[1]}"
        )
    if (source / ".git").exists() and shutil.which("git"):
        # The checkout's own files only: no stale build/ folder, no virtual environment.
        listed = _run("wheels", ["git", "-C", str(source), "ls-files", "-co", "--exclude-standard", "-z"])
        clean = out.parent / "source"
        for name in filter(None, listed.stdout.split("\0")):
            if (source / name).is_file():
                (clean / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, clean / name)
        source = clean
    _run(
        "wheels",
        [sys.executable, "-m", "pip", "wheel", "-q", f"{source}[appliance]", "-w", str(out)],
        timeout=1800,
    )


def sources(request: BuildRequest) -> list[str]:
    """The archive's suite with its updates, and the security archive beside it (same host)."""
    mirror = request.mirror.rstrip("/")
    lines = [f"deb {mirror} {request.suite} main", f"deb {mirror} {request.suite}-updates main"]
    if mirror.endswith("/debian"):
        lines.append(f"deb {mirror}-security {request.suite}-security main")
    return lines


def install_system(request: BuildRequest, root: Path, cache: Path) -> int:
    """mmdebstrap into `root`, the packages cached in `cache`; how many came from the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    cached = {p.name for p in cache.glob("*.deb")}
    packages = [*PACKAGES, *(POCL if request.with_pocl else ()), *request.extra_packages]
    argv = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(packages),
    ]
    argv += [f"--dpkgopt={x}" for x in DPKG_EXCLUDES]
    kept, archives = quote(str(cache)), '"$1"/var/cache/apt/archives'
    # The package cache (mmdebstrap's own recipe): what was downloaded before is not again.
    argv += [
        "--skip=download/empty",
        "--skip=essential/unlink",
        f"--setup-hook=mkdir -p {archives}/ && cp -a {kept}/. {archives}/",
        f"--customize-hook=cp -a {archives}/*.deb {kept}/ 2>/dev/null || true",
        f"--customize-hook=rm -f {archives}/*.deb",
        request.suite,
        str(root),
        *sources(request),
    ]
    _run("system", argv, timeout=3600)
    # Package and version as the archive names its files (an epoch's ':' written %3a).
    installed = {"_".join(line.split()).replace(":", "%3a") for line in _dpkg_list(root)}
    return len(installed & {name.rsplit("_", 1)[0] for name in cached})


def _dpkg_list(root: Path) -> list[str]:
    out = _run(
        "system", ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"]
    )
    return sorted(line for line in out.stdout.splitlines() if line)


def install_radium(request: BuildRequest, root: Path, wheels: Path) -> None:
    """radium in /opt/radium, the units enabled, SSH as the appliance wants it."""
    shutil.copytree(wheels, root / "tmp/wheels")
    try:
        _run("radium", ["chroot", str(root), "python3", "-m", "venv", "/opt/radium"], timeout=600)
        pip = [
            "chroot",
            str(root),
            "/opt/radium/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            "/tmp/wheels",
        ]
        _run("radium", [*pip, "radium[appliance]"], timeout=1800)
    finally:
        shutil.rmtree(root / "tmp/wheels", ignore_errors=True)

    units = Path(__file__).parent / "units"
    system = root / "etc/systemd/system"
    for unit, target in (
        ("radium-firstboot.service", "sysinit.target"),
        ("radiumd.service", "multi-user.target"),
    ):
        shutil.copy(units / unit, system / unit)
        wants = system / f"{target}.wants"
        wants.mkdir(exist_ok=True)
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    # radiumd's own user, made now (same ids in every appliance of this image) and by
    # systemd-sysusers at boot should /etc lose it.
    sysusers = root / "usr/lib/sysusers.d/radium.conf"
    sysusers.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(units / "radium.sysusers", sysusers)
    _run("radium", ["systemd-sysusers", f"--root={root}", str(sysusers)])
    _run("radium", ["systemctl", f"--root={root}", "enable", "systemd-networkd", "systemd-resolved"])
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/radium.conf").write_text(SSHD_CONFIG)
    (root / "etc/systemd/system/ssh.service.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system/ssh.service.d/radium.conf").write_text(SSH_DROP_IN)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each appliance makes its own at its first start
    (root / "etc/machine-id").write_text("")  # each appliance its own, at its first boot
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/hostname").write_text("radium-appliance\n")
    (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n")
    # resolv.conf from systemd-resolved (DNS servers from DHCP or radium.network.dns).
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")


def run_hooks(request: BuildRequest, root: Path) -> None:
    for hook in request.hooks:
        _run("hooks", [str(hook.resolve()), str(root)], timeout=3600)


def write_record(request: BuildRequest, root: Path) -> int:
    """The image's record, /usr/lib/radium/image.json, of what it holds once the hooks ran too;
    how many Debian packages that is."""
    packages = _dpkg_list(root)
    freeze = _run("hooks", ["chroot", str(root), "/opt/radium/bin/pip", "freeze", "--all"]).stdout.split()
    record = {
        "radium": VERSION,
        "suite": request.suite,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "with_pocl": request.with_pocl,
        "hooks": [h.name for h in request.hooks],
        "packages": packages,
        "python_packages": freeze,
    }
    (root / "usr/lib/radium").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/radium/image.json").write_text(json.dumps(record, indent=1) + "\n")
    return len(packages)


def make_disk(request: BuildRequest, root: Path, work: Path) -> Path:
    """A GPT disk image: the EFI system partition and the root file system, made from `root`."""
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("step disk: no kernel in the image (linux-image-amd64 not installed?)")
    kernel = kernels[-1]
    release = kernel.name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{release}"
    if not initrd.exists():
        raise BuildError(f"step disk: no initrd for kernel {release}")
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"radium-appliance-root:{VERSION}:{request.suite}"))

    # The GPT first, then each file system written straight into its partition (no loop device,
    # nothing mounted): FAT with an offset (mkfs.vfat, mtools' IMAGE@@OFFSET), ext4 with one.
    total = request.disk_gib << 30
    esp_start, root_start = 1 << 20, (ESP_MIB + 1) << 20
    root_bytes = total - root_start - (1 << 20)  # the GPT's backup in the last MiB
    disk = work / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(total)
    layout = (
        "label: gpt\n"
        f"start={esp_start // 512}, size={ESP_MIB * 2048}, type={ESP_TYPE}, name=ESP\n"
        f"start={root_start // 512}, size={root_bytes // 512}, type={ROOT_TYPE}, name=root\n"
    )
    _run("disk", ["sfdisk", "-q", str(disk)], input=layout)

    # FAT32 (as UEFI wants) with 512-byte clusters: enough of them in 256 MiB.
    fat = [
        "mkfs.vfat",
        "-F",
        "32",
        "-s",
        "1",
        "-n",
        "ESP",
        "-i",
        fs_uuid[:8],
        "--offset",
        str(esp_start // 512),
    ]
    _run("disk", [*fat, str(disk), str(ESP_MIB * 1024)])
    esp = f"{disk}@@{esp_start}"
    loader = work / "loader"
    (loader / "entries").mkdir(parents=True)
    (loader / "loader.conf").write_text("default radium.conf\ntimeout 0\n")
    (loader / "entries/radium.conf").write_text(
        f"title Radium appliance {VERSION}\nlinux /vmlinuz\ninitrd /initrd.img\n"
        f"options root=UUID={fs_uuid} ro console=tty0 console=ttyS0,115200 quiet\n"
    )
    mtools = {"env": dict(os.environ, MTOOLS_SKIP_CHECK="1")}
    for folder in ("::/EFI", "::/EFI/BOOT"):
        _run("disk", ["mmd", "-i", esp, folder], **mtools)
    efi = root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    copies = [(efi, "::/EFI/BOOT/BOOTX64.EFI"), (kernel, "::/vmlinuz"), (initrd, "::/initrd.img")]
    for src, dst in copies:
        _run("disk", ["mcopy", "-i", esp, str(src), dst], **mtools)
    _run("disk", ["mcopy", "-s", "-i", esp, str(loader), "::/"], **mtools)

    _run(
        "disk",
        ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", fs_uuid, "-d", str(root),
         "-E", f"offset={root_start},lazy_itable_init=1,lazy_journal_init=1",
         str(disk), f"{root_bytes // 1024}k"],
        timeout=1800,
    )  # fmt: skip
    return disk


def make_vmdk(disk: Path, work: Path) -> Path:
    vmdk = work / "disk.vmdk"
    options = "subformat=streamOptimized,adapter_type=lsilogic"
    _run("vmdk", ["qemu-img", "convert", "-O", "vmdk", "-o", options, str(disk), str(vmdk)], timeout=3600)
    disk.unlink()
    return vmdk


def pack(request: BuildRequest, vmdk: Path) -> Path:
    ovf.write_ova(request.output, request.name, disk=vmdk, disk_gib=request.disk_gib)
    problems = ovf.validate_package(request.output)
    if problems:
        request.output.unlink(missing_ok=True)
        raise BuildError("step ova: the package does not validate:\n  " + "\n  ".join(problems))
    return request.output


# --- the whole build --------------------------------------------------------------------------------


def build(request: BuildRequest, progress: Progress = lambda _: None) -> BuildResult:
    """Build the appliance image into `request.output` (see the module's text for the steps)."""
    request.check()
    steps: dict[str, float] = {}
    cache = request.cache or default_cache()
    names = ["tools", "wheels", "system", "radium", "hooks", "disk", "vmdk", "ova"]

    def step(name: str, what: str) -> _Step:
        return _Step(name, what, names.index(name) + 1, len(names), steps, progress)

    with step("tools", "checking the tools"):
        check_tools()
        source = request.source or source_checkout()
    work = Path(tempfile.mkdtemp(prefix=".radium-build-", dir=request.output.resolve().parent))
    try:
        root = work / "root"
        with step("wheels", f"building radium {VERSION} and its dependencies as wheels"):
            build_wheels(request, source, work / "wheels")
        pocl = " with PoCL" if request.with_pocl else ""
        with step("system", f"installing Debian {request.suite}{pocl} (mmdebstrap, cache {cache / 'debs'})"):
            reused = install_system(request, root, cache / "debs")
        with step("radium", "installing radium into /opt/radium and enabling its units"):
            install_radium(request, root, work / "wheels")
        with step("hooks", f"running {len(request.hooks)} hook(s), then recording what the image holds"):
            run_hooks(request, root)
            count = write_record(request, root)
        with step("disk", f"making the {request.disk_gib} GiB disk (EFI system partition, ext4 root)"):
            disk = make_disk(request, root, work)
            shutil.rmtree(root)
        with step("vmdk", "converting it to a stream-optimized VMDK"):
            vmdk = make_vmdk(disk, work)
        with step("ova", f"packing {request.output} and checking it"):
            pack(request, vmdk)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(
        output=str(request.output),
        size=request.output.stat().st_size,
        disk_gib=request.disk_gib,
        version=VERSION,
        suite=request.suite,
        packages=count,
        steps=steps,
        reused_packages=reused,
    )


@dataclass
class _Step:
    name: str
    what: str
    number: int
    of: int
    steps: dict[str, float]
    progress: Progress
    started: float = 0.0

    def __enter__(self) -> _Step:
        self.progress(f"[{self.number}/{self.of}] {self.what}")
        self.started = time.monotonic()
        return self

    def __exit__(self, kind, exc, tb) -> None:  # type: ignore[no-untyped-def]
        took = time.monotonic() - self.started
        self.steps[self.name] = round(took, 1)
        if exc is None:
            self.progress(f"[{self.number}/{self.of}] done in {took:.0f} s")
        elif isinstance(exc, OSError):  # a full disk, a file in the way
            raise BuildError(f"step {self.name}: {exc}") from None
