"""Which device nodes a run may open: the ones every program needs, its lease's, and those the
operator lends every run — nothing else, held by the kernel (the run's cgroup).

The run sees the appliance's `/dev` (bound into its world), and several vendors' nodes are
mode 0666 (`/dev/nvidia*` by default): without a filter a run could open a GPU another tenant
leased.  As container runtimes do (runc's default device list), a run's cgroup allows

- `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, `ptmx` and the pseudo-terminals;
- the nodes of the devices its lease holds (`devices.pci.device_nodes`);
- `[run] device_nodes`, the operator's (an RDMA NIC's `/dev/infiniband/uverbs0`, say);

and refuses every other open with EPERM.  On cgroup v1 that is the `devices` controller's
`devices.deny` / `devices.allow`; on v2 a small eBPF program of type
BPF_PROG_TYPE_CGROUP_DEVICE attached to the run's cgroup (what systemd's DeviceAllow= and
runc do), assembled here: a few comparisons per rule, no compiler.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A device or a range of them: kind "c" (character) or "b" (block); None is any number."""

    kind: str
    major: int | None
    minor: int | None
    access: str = "rwm"  # read, write, mknod

    def v1(self) -> str:
        """As cgroup v1's devices.allow reads it."""
        number = lambda n: "*" if n is None else str(n)  # noqa: E731
        return f"{self.kind} {number(self.major)}:{number(self.minor)} {self.access}"


# What any program may need: the memory devices, the terminal, and UNIX98 pseudo-terminals
# (majors 136-143).  mknod is not given: a run has no CAP_MKNOD, and its nodes would be no others.
BASIC = (
    *(Rule("c", 1, minor, "rw") for minor in (3, 5, 7, 8, 9)),  # null zero full random urandom
    Rule("c", 5, 0, "rw"),  # /dev/tty
    Rule("c", 5, 2, "rw"),  # /dev/ptmx
    *(Rule("c", major, None, "rw") for major in range(136, 144)),  # /dev/pts/*
)


def rules_for(paths: list[str]) -> tuple[list[Rule], list[str]]:
    """Rules for these device nodes, and the paths that are not device nodes (to log)."""
    rules, missing = [], []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            missing.append(path)
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
            rules.append(Rule(kind, os.major(st.st_rdev), os.minor(st.st_rdev), "rw"))
        else:
            missing.append(path)
    return rules, missing


def apply_v1(folder: os.PathLike[str] | str, rules: list[Rule]) -> None:
    """The v1 `devices` controller: deny all, then allow each rule (one line per write)."""
    with open(os.path.join(folder, "devices.deny"), "w") as f:
        f.write("a")
    for rule in rules:
        with open(os.path.join(folder, "devices.allow"), "w") as f:
            f.write(rule.v1())


# --- cgroup v2: an eBPF device program ------------------------------------------------------

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD, _BPF_PROG_ATTACH = 5, 8
_BPF_PROG_TYPE_CGROUP_DEVICE, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI = 15, 6, 2
_DEV_TYPE = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
_ACCESS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE

# The few instructions used (struct bpf_insn: code, dst|src<<4, off, imm).
_LDX_W, _AND_K, _RSH_K, _MOV_K, _JNE_K, _JSET_K, _EXIT = 0x61, 0x57, 0x77, 0xB7, 0x55, 0x45, 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(rules: list[Rule]) -> bytes:
    """The device program: 1 (allow) if a rule matches the access, else 0 (EPERM).

    Its context is struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}, with
    access_type = access << 16 | type.  Registers: r2 type, r3 access, r4 major, r5 minor."""
    code = [
        _insn(_LDX_W, dst=2, src=1, off=0),
        _insn(_AND_K, dst=2, imm=0xFFFF),
        _insn(_LDX_W, dst=3, src=1, off=0),
        _insn(_RSH_K, dst=3, imm=16),
        _insn(_LDX_W, dst=4, src=1, off=4),
        _insn(_LDX_W, dst=5, src=1, off=8),
    ]
    for rule in rules:
        # Each test jumps past the rule's "allow" on a mismatch.
        tests = [(_JNE_K, 2, _DEV_TYPE[rule.kind])]
        if rule.major is not None:
            tests.append((_JNE_K, 4, rule.major))
        if rule.minor is not None:
            tests.append((_JNE_K, 5, rule.minor))
        refused = 7 & ~sum(_ACCESS[a] for a in rule.access)
        if refused:
            tests.append((_JSET_K, 3, refused))  # any access the rule does not give
        for i, (op, reg, imm) in enumerate(tests):
            code.append(_insn(op, dst=reg, off=len(tests) - i - 1 + 2, imm=imm))
        code += [_insn(_MOV_K, dst=0, imm=1), _insn(_EXIT)]
    code += [_insn(_MOV_K, dst=0, imm=0), _insn(_EXIT)]
    return b"".join(code)


_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise OSError(f"no bpf(2) number known for {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(command), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({command}): {os.strerror(err)}")
    return int(result)


def _load(insns: bytes, log_level: int) -> int:
    text = ctypes.create_string_buffer(insns, len(insns))
    licence = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(1 << 16 if log_level else 1)
    attr = ctypes.create_string_buffer(128)
    fields = (len(insns) // 8, ctypes.addressof(text), ctypes.addressof(licence))
    log_fields = (log_level, len(log), ctypes.addressof(log)) if log_level else (0, 0, 0)
    struct.pack_into("<IIQQIIQ", attr, 0, _BPF_PROG_TYPE_CGROUP_DEVICE, *fields, *log_fields)
    struct.pack_into("<I", attr, 68, _BPF_CGROUP_DEVICE)  # expected_attach_type
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except OSError as exc:
        said = log.value.decode(errors="replace").strip()[-2000:]
        raise OSError(
            exc.errno, f"loading the device filter: {exc.strerror}{': ' + said if said else ''}"
        ) from None


def attach_v2(folder: os.PathLike[str] | str, rules: list[Rule]) -> None:
    """Load the device program for `rules` and attach it to the cgroup v2 folder.  The cgroup
    holds the program from then on (its file descriptor is closed here); it goes with the
    cgroup.  ALLOW_MULTI: a parent's device program (systemd's DevicePolicy=) still applies."""
    try:
        prog = _load(program(rules), log_level=0)
    except OSError:  # again, with the verifier's log: why it refused
        prog = _load(program(rules), log_level=1)
    try:
        target = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = ctypes.create_string_buffer(128)
            struct.pack_into("<IIII", attr, 0, target, prog, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI)
            _bpf(_BPF_PROG_ATTACH, attr)
        finally:
            os.close(target)
    finally:
        os.close(prog)
