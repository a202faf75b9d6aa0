"""`radiumd`: the appliance daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .._config import load_daemon_config
from .._errors import RadiumError
from .._version import VERSION
from . import logs, privileges
from .server import Daemon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="radiumd", description="Radium appliance daemon: lends this machine's accelerators."
    )
    parser.add_argument("--config", type=Path, help="TOML file (default /etc/radium/radiumd.toml)")
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="started as root, drop to this user once the supervisors' fork server (which stays root "
        "to mount each run's file systems) has started; the shipped unit uses radium",
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"radiumd {VERSION}")
    args = parser.parse_args(argv)
    try:
        config = load_daemon_config(args.config)
        user = privileges.resolve(args.user) if args.user else None
        if user is not None and not args.check:
            privileges.needs_drop(user)  # started as root (or as that user already)
    except RadiumError as exc:
        print(f"radiumd: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.check:
        print(f"radiumd: {config.source or 'defaults'}: configuration is valid")
        return 0
    log = logs.setup(config.log.level, config.log.format)
    try:
        asyncio.run(Daemon(config, log, user).run())
    except RadiumError as exc:
        print(f"radiumd: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. the port is taken
        print(f"radiumd: {exc}", file=sys.stderr)
        return 71
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
