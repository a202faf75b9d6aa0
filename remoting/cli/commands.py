"""`radium`'s verbs: the user's command line on a client VM.

One function per verb, each returning a `Result`; `main` parses, runs, and
renders.  User mistakes and unreachable appliances end in one clear line (or a
JSON error with `--json`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import schema as s
from .._config import (
    SYSTEM_CLIENT_CONFIG,
    ClientConfig,
    check_client_config,
    client_config_path,
    load_client_config,
    load_toml,
    save_client_config,
)
from .._errors import ConfigError, RadiumError, UsageError
from .._filters import parse_filter
from .._version import VERSION
from ..client import api, holder
from ..output import Result, emit, emit_error, mib, percent

if TYPE_CHECKING:  # rich is imported when a table is drawn: `radium run` never needs it
    from rich.console import Console

    from ..client.run import RunResult

PROG = "radium"


# --- list-gpus and smi -----------------------------------------------------------


def _failures(results: list[api.PerAppliance]) -> tuple[list[str], int]:
    warnings = [f"{r.appliance.name}: {r.error}" for r in results if r.error is not None]
    code = max((r.error.exit_code for r in results if r.error is not None), default=0)
    return warnings, code


def cmd_list_gpus(args: argparse.Namespace) -> Result:
    config = load_client_config()
    results = asyncio.run(api.list_devices(config, usage=False, server=args.server))
    rows: list[dict[str, Any]] = []
    for r in results:
        if r.value is None:
            continue
        for st in r.value.devices:
            d = st.device
            rows.append(
                {
                    "appliance": r.appliance.name,
                    "id": d.id,
                    "model": d.model,
                    "vendor": d.vendor,
                    "backend": d.backend,
                    "memory_bytes": d.memory_bytes,
                    "memory_allocated_bytes": st.memory_allocated_bytes,
                    "pci_address": d.pci_address,
                    "health": d.health,
                    "leases": len(st.leases),
                    "free": st.memory_allocated_bytes == 0 and d.health != "failed",
                }
            )

    def render(console: Console) -> None:
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("APPLIANCE", "DEVICE", "MODEL", "MEMORY", "ALLOCATED", "LEASES", "HEALTH"):
            table.add_column(col)
        for row in rows:
            table.add_row(
                row["appliance"],
                row["id"],
                row["model"],
                mib(row["memory_bytes"]),
                mib(row["memory_allocated_bytes"]),
                str(row["leases"]),
                row["health"],
            )
        console.print(table if rows else "no devices")

    warnings, code = _failures(results)
    return Result({"devices": rows, "errors": _errors_json(results)}, render, code, warnings)


def _errors_json(results: list[api.PerAppliance]) -> list[dict]:
    return [
        {"appliance": r.appliance.name, "code": r.error.code, "message": r.error.message}
        for r in results
        if r.error is not None
    ]


def cmd_smi(args: argparse.Namespace) -> Result:
    config = load_client_config()
    results = asyncio.run(api.list_devices(config, usage=True, server=args.server))
    appliances: list[dict[str, Any]] = [
        {
            "appliance": r.appliance.name,
            "server": r.value.server,
            "devices": r.value.devices,
            "queue_length": r.value.queue_length,
        }
        for r in results
        if r.value is not None
    ]

    def render(console: Console) -> None:
        for a in appliances:
            server = a["server"]
            console.print(
                f"[bold]{a['appliance']}[/bold]  host {server.hostname}  radiumd {server.version}"
                f"  queue {a['queue_length']}"
            )
            from rich.table import Table

            table = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("DEVICE", "MODEL", "USED", "ALLOCATED", "TOTAL", "UTIL", "HEALTH", "LEASES"):
                table.add_column(col)
            for st in a["devices"]:
                d = st.device
                holders = ", ".join(f"{h.lease_id} {h.client} {h.fraction:.0%}" for h in st.leases) or "-"
                table.add_row(
                    d.id,
                    d.model,
                    mib(st.memory_used_bytes),
                    mib(st.memory_allocated_bytes),
                    mib(d.memory_bytes),
                    percent(st.utilization_percent),
                    d.health,
                    holders,
                )
            console.print(table)

    warnings, code = _failures(results)
    return Result({"appliances": appliances, "errors": _errors_json(results)}, render, code, warnings)


# --- reservations -----------------------------------------------------------------


def allocation_request(args: argparse.Namespace) -> s.AllocationRequest:
    request = s.AllocationRequest(
        count=args.n,
        fraction=args.p,
        memory_mib=args.m,
        filters=[parse_filter(f) for f in args.filter],
    )
    from .._allocator import validate_request

    validate_request(request)
    return request


def cmd_request_gpus(args: argparse.Namespace) -> Result:
    config = load_client_config()  # fail here, in the foreground, if it is broken
    request = allocation_request(args)
    if args.timeout < 0:
        raise UsageError(f"--timeout must be 0 or more seconds, got {args.timeout}")
    state = holder.start_holder(Path(config.source), request, args.timeout, args.server)

    def render(console: Console) -> None:
        lease = state.lease
        console.print(f"reserved {len(lease.parts)} device(s) on {state.appliance} as {lease.id}:")
        for p in lease.parts:
            console.print(f"  {p.device_id}  {p.fraction:.0%}  {mib(p.memory_bytes)}")
        console.print("release with `radium release-gpus`")

    return Result(state, render)


def cmd_release_gpus(args: argparse.Namespace) -> Result:
    state = holder.stop_holder()

    def render(console: Console) -> None:
        if state is None:
            console.print("no reservation held")
        else:
            console.print(f"released {state.lease.id} on {state.appliance}")

    return Result({"released": state}, render)


# --- run -----------------------------------------------------------------------------


def run_arguments(args: argparse.Namespace) -> tuple[list[str], s.AllocationRequest | None]:
    """`radium run`'s command and the devices it asks for (None: the reservation, or one device)."""
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("nothing to run: radium run [options] -- COMMAND [ARG...]")
    explicit = args.n is not None or args.p is not None or args.m is not None or args.filter
    request = None
    if explicit:
        args.n = args.n or 1
        request = allocation_request(args)
    if args.timeout < 0:
        raise UsageError(f"--timeout must be 0 or more seconds, got {args.timeout}")
    return argv, request


def show_exports(config: ClientConfig, environ: Mapping[str, str]) -> str:
    """`radium run --show-exports`: what runs may not read of this client."""
    from ..client.withheld import export_policy

    return "".join(line + "\n" for line in export_policy(config, environ).describe())


def run_report(result: RunResult, stats: bool) -> str:
    """What `radium run` says on stderr after the process's own output (often nothing)."""
    lines = []
    if result.writeback_errors:
        lines.append(
            f"{PROG}: some changes could not be written back: {'; '.join(result.writeback_errors[:5])}"
        )
    if result.detail:
        lines.append(f"{PROG}: {result.appliance}: {result.detail}")
    if stats:
        st = result.stats
        phases = " ".join(f"{k}={v:.3f}s" for k, v in st.phases.items())
        lines.append(
            f"{PROG}: ran on {result.appliance} ({result.hostname}); file requests {st.fs_requests} "
            f"({st.fs_direct} direct), FUSE operations {st.fuse_ops}, warm tree files {st.warm_files}, "
            f"bytes fetched {st.bytes_fetched}, cache hits {st.cache_hits}, misses {st.cache_misses}, "
            f"written back {st.bytes_written_back}, output {st.output_bytes}; {phases}"
        )
        content = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(st.content_seconds.items()))
        answers = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(result.file_seconds.items()))
        lines.append(
            f"{PROG}: time in file content on the appliance: {content or 'none'}; "
            f"answering file requests here: {answers or 'none'}"
        )
    return "".join(line + "\n" for line in lines)


def cmd_run(args: argparse.Namespace) -> int:
    """Not a `Result`: the process's own output is the output, its status the exit code.

    This runs it from this process; `radium run` normally hands it to the run
    agent instead (client/agent.py), which does the same from a warm process.
    """
    from ..client import run as remote

    config = load_client_config()
    if args.show_exports:
        sys.stdout.write(show_exports(config, os.environ))
        return 0
    argv, request = run_arguments(args)
    result = asyncio.run(remote.run(config, argv, request, args.timeout, args.server, memory=args.memory))
    sys.stderr.write(run_report(result, args.stats))
    return result.status


# --- health, version, configure -----------------------------------------------------


def cmd_health(args: argparse.Namespace) -> Result:
    config = load_client_config()
    results = asyncio.run(api.check_health(config, server=args.server))
    report = []
    for r in results:
        entry: dict = {"appliance": r.appliance.name, "address": r.appliance.address}
        if r.value is None:
            assert r.error is not None
            entry.update(
                reachable=r.error.code not in ("unreachable",),
                key_trusted=False,
                healthy=False,
                error=r.error.message,
                devices=[],
            )
        else:
            bad = [d for d in r.value.devices if d.health != "ok"]
            entry.update(
                reachable=True,
                key_trusted=True,
                healthy=not bad,
                error=None,
                server=r.value.server,
                client=r.value.client,
                devices=[
                    {"id": d.id, "model": d.model, "health": d.health, "detail": d.health_detail}
                    for d in r.value.devices
                ],
            )
            if not r.value.devices:
                entry.update(healthy=False, error="no devices")
            elif bad:
                entry["error"] = "; ".join(f"{d.id}: {d.health} {d.health_detail}".strip() for d in bad)
        report.append(entry)
    healthy = all(e["healthy"] for e in report)

    def render(console: Console) -> None:
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("APPLIANCE", "ADDRESS", "REACHABLE", "KEY", "DEVICES", "STATUS"):
            table.add_column(col)
        for e in report:
            ok_devices = sum(1 for d in e["devices"] if d["health"] == "ok")
            table.add_row(
                e["appliance"],
                e["address"],
                _mark(e["reachable"]),
                _mark(e["key_trusted"]),
                f"{ok_devices}/{len(e['devices'])} ok",
                "[green]healthy[/green]" if e["healthy"] else f"[red]{e['error']}[/red]",
            )
        console.print(table)

    return Result({"healthy": healthy, "appliances": report}, render, 0 if healthy else 1)


def _mark(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def cmd_agent(args: argparse.Namespace) -> Result:
    """The run agents of this client's state directory (client/agent.py): list or stop them."""
    from ..client import handoff

    agents = handoff.control(args.action)
    verb = "stopped" if args.action == "stop" else "running"

    def render(console: Console) -> None:
        if not agents:
            console.print("no run agent is running")
        for a in agents:
            console.print(
                f"{verb}: pid {a['pid']}, {a['runs']} run(s) now, {a['served']} served; "
                f"exits after {a['idle_exit_s']:g}s idle"
            )

    return Result({"agents": agents, "action": args.action}, render)


def cmd_version(args: argparse.Namespace) -> Result:
    data = {"radium": VERSION, "protocol": s.PROTOCOL_VERSION}
    return Result(data, lambda c: c.print(f"radium {VERSION} (protocol {s.PROTOCOL_VERSION})"))


def cmd_configure(args: argparse.Namespace) -> Result:
    if args.from_guestinfo:
        from .. import guestinfo

        # What register-vm wrote is the VM's whole registration: its appliances replace the file's.
        bundle = guestinfo.read()
    else:
        bundle = load_toml(args.bundle, ClientConfig)
        check_client_config(bundle)
    what = "guestinfo" if args.from_guestinfo else "bundle"
    target = SYSTEM_CLIENT_CONFIG if args.system else client_config_path()
    merged = bundle
    if target.exists():
        current = load_client_config(target)
        same_key = current.client.public_key == bundle.client.public_key
        # The operator re-keys a VM through its guestinfo: the same client with a new key is no switch.
        rekeyed = args.from_guestinfo and current.client.name == bundle.client.name
        if not same_key and not rekeyed and not args.replace:
            raise ConfigError(
                f"{target} already holds client {current.client.name!r} with another key; "
                f"the {what} is for "
                f"{bundle.client.name!r}. Use --replace to switch identity."
            )
        if same_key and not args.from_guestinfo:
            names = {a.name for a in bundle.appliances}
            merged.appliances = [a for a in current.appliances if a.name not in names] + list(
                bundle.appliances
            )
    before = target.read_bytes() if target.exists() else None
    save_client_config(merged, target)
    changed = target.read_bytes() != before  # (what Ansible's radium_client role reports)
    appliances = [a.name for a in merged.appliances]
    data = {"config": str(target), "client": merged.client.name, "appliances": appliances, "changed": changed}
    verb = "configured" if changed else "already configured:"
    return Result(
        data,
        lambda c: c.print(
            f"{verb} client {merged.client.name} in {target} "
            f"with appliances: {', '.join(appliances) or 'none'}"
        ),
    )


# --- parsing ------------------------------------------------------------------------


SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """A size such as 512M, 8G or 1.5GiB (binary units; a bare number is MiB), in bytes."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in SIZE_UNITS else ""
    try:
        value = float(number[: len(number) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 8G, got {text!r}") from None
    if not 0 < value < 1 << 20:
        raise argparse.ArgumentTypeError(f"expected a size above 0 such as 512M or 8G, got {text!r}")
    return int(value * SIZE_UNITS[unit])


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.5, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Use accelerators that live on Radium appliances."
    )
    parser.add_argument("--version", action="version", version=f"radium {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func, help: str, server: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if server:
            p.add_argument("--server", metavar="NAME", help="only this appliance")
        p.set_defaults(func=func)
        return p

    command("list-gpus", cmd_list_gpus, "list every device of every appliance", server=True)
    command("smi", cmd_smi, "show memory, utilisation and leases per device", server=True)
    p = command(
        "request-gpus",
        cmd_request_gpus,
        "reserve devices for this session (kept until release-gpus)",
        server=True,
    )
    p.add_argument("-n", type=int, default=1, metavar="N", help="number of devices (default 1)")
    share = p.add_mutually_exclusive_group()
    share.add_argument("-p", type=_fraction, metavar="F", help="fraction of each device, 0 < F <= 1")
    share.add_argument("-m", type=int, metavar="MiB", help="memory of each device, in MiB")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="K=V",
        help="device.name=…, device.memory>=…, server.hostname=… (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds in the queue (default 0: fail at once)",
    )
    p = command("run", cmd_run, "run a command on an appliance, as if it ran here", server=True)
    p.add_argument("-n", type=int, default=None, metavar="N", help="number of devices (default 1)")
    share = p.add_mutually_exclusive_group()
    share.add_argument("-p", type=_fraction, metavar="F", help="fraction of each device, 0 < F <= 1")
    share.add_argument("-m", type=int, metavar="MiB", help="memory of each device, in MiB")
    p.add_argument("--filter", action="append", default=[], metavar="K=V", help="as for request-gpus")
    p.add_argument("--timeout", type=float, default=0.0, metavar="S", help="wait up to S seconds for devices")
    p.add_argument(
        "--memory",
        type=_size,
        default=0,
        metavar="SIZE",
        help="the appliance's memory the run may use, swap included (512M, 8G; default: the appliance's)",
    )
    p.add_argument(
        "--stats", action="store_true", help="print bytes moved, cache hits and timings at the end"
    )
    p.add_argument(
        "--show-exports",
        action="store_true",
        help="print what is withheld from appliances (secrets look absent to runs), run nothing",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    command("release-gpus", cmd_release_gpus, "release the devices reserved by request-gpus")
    command(
        "health", cmd_health, "check reachability, keys and device health of every appliance", server=True
    )
    p = command("agent", cmd_agent, "show or stop the run agent that starts `radium run` quickly")
    p.add_argument("action", choices=("status", "stop"), help="status: list the agents; stop: end them")
    command("version", cmd_version, "print the version")
    from ..bench import cli as bench

    p = sub.add_parser(
        "bench",
        help="the Radium paper's CNN benchmark: training here against through radium run",
        description="Train the Radium paper's CNNs on CIFAR-10-shaped data here and through radium run; "
        "report images/s and their ratio.",
        epilog=bench.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(p)
    p.set_defaults(func=bench.command, json=False)
    p = command("configure", cmd_configure, "install a client bundle from your operator")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="the bundle file")
    source.add_argument(
        "--from-guestinfo",
        action="store_true",
        help="read what `radium-admin register-vm` wrote into this VM's guestinfo (needs open-vm-tools; "
        "RADIUM_GUESTINFO_DIR: a folder of files named like the keys, for tests and offline use)",
    )
    p.add_argument("--system", action="store_true", help=f"write {SYSTEM_CLIENT_CONFIG}")
    p.add_argument("--replace", action="store_true", help="replace a configuration of another client")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        code = result if isinstance(result, int) else emit(result, args.json)
    except RadiumError as exc:
        code = emit_error(PROG, exc, args.json)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        code = 130
    if args.func is cmd_run and argv is None:
        # `radium run` as a command: everything it keeps is saved and its output flushed;
        # skip the interpreter's teardown (joining idle worker threads, freeing every
        # module: ~40 ms here), which a user would wait for after their process ended.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # closed by the reader (`| head`): nothing more can reach it anyway
        os._exit(code)
    return code


__all__ = ["main", "build_parser"]
