"""`radium-appliance-setup`: make a plain Linux host a Radium appliance, without the OVF.

What the Ansible collection's `radium_appliance` role runs on the host, after installing
Radium into its virtual environment.  It writes, under `--root` (default /), radiumd's part
of what a VM's first boot writes (`firstboot.apply_radiumd`):

    etc/radium/radiumd.toml            radiumd's configuration (validated by loading it as radiumd does)
    var/lib/radium/server.key[_secret] the server's key pair: made here the first time and kept after,
                                       so the secret key never leaves the host
    etc/radium/admins.d/NAME.key       the operator's public key
    etc/radium/clients.d/              (created empty: enrolled clients go here)
    etc/subuid, etc/subgid             root's delegated ids for `radium run` (added when missing)
    etc/systemd/system/radiumd.service the unit shipped in appliance/units/, pointed at this installation
    etc/sysusers.d/radium.conf         radiumd's own user, which systemd-sysusers then makes

and not the network, the host name, SSH or the console banner: a host has those already.
Running it again with the same options changes nothing; `--json` says what changed and the
server's public key, which the operator's configuration records.  Starting the service is the
caller's (`systemctl enable --now radiumd`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from radium.remoting import KeyPair, RadiumError

from .firstboot import CONFIG, Writer, _keypair, apply_radiumd, existing_config, guarded
from .properties import DEFAULT_PORT, parse

UNIT = Path("etc/systemd/system/radiumd.service")
SYSUSERS = Path("etc/sysusers.d/radium.conf")
USER = "radium"  #: radiumd's own (the unit's --user)
SHIPPED_PREFIX = "/opt/radium/"  #: where the shipped units expect Radium (the image's layout)
OPTIONS = {  # property -> the option that sets it here, for the messages
    "radium.name": "--name",
    "radium.admin_public_key": "--admin-key",
    "radium.admin_name": "--admin-name",
    "radium.listen_port": "--port",
    "radium.metrics_listen": "--metrics-listen",
}


@dataclass
class HostSetup:
    """What `setup` did."""

    name: str
    port: int
    server_public_key: str
    changed: list[str]  #: the files written (none: it was already so)
    unit: str


def unit_text(prefix: str) -> str:
    """radiumd.service as shipped, its programs taken from the installation at `prefix`."""
    text = (resources.files("radium.appliance") / "units" / "radiumd.service").read_text()
    return text.replace(SHIPPED_PREFIX, prefix.rstrip("/") + "/")


def make_user(root: Path, w: Writer) -> None:
    """radiumd's user, by systemd-sysusers from SYSUSERS (nothing when it exists already)."""
    passwd = root / "etc/passwd"
    if passwd.exists() and any(line.startswith(f"{USER}:") for line in passwd.read_text().splitlines()):
        return
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        raise RadiumError(f"cannot make the user {USER}: systemd-sysusers not found (radiumd needs systemd)")
    out = subprocess.run([tool, f"--root={root}", str(root / SYSUSERS)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RadiumError(f"cannot make the user {USER}: systemd-sysusers: {out.stderr.strip()}")
    w.changed.append(f"user {USER}")


def setup(
    name: str,
    admin_public_key: str,
    *,
    admin_name: str = "operator",
    port: int = DEFAULT_PORT,
    metrics_listen: str = "127.0.0.1:9450",
    root: Path = Path("/"),
    prefix: str = sys.prefix,
) -> HostSetup:
    """Write radiumd's configuration, keys and unit under `root` (see the module's text)."""
    w = Writer(root)
    state = w.path(existing_config(root / CONFIG).server.state_dir)
    public, secret = _keypair(state / "server.key_secret")
    if public is None or secret is None:
        pair = KeyPair.generate()
        public, secret = pair.public, pair.secret
    assert secret is not None
    values = {
        "radium.name": name,
        "radium.server_secret_key": secret,
        "radium.admin_public_key": admin_public_key,
        "radium.admin_name": admin_name,
        "radium.listen_port": str(port),
        "radium.metrics_listen": metrics_listen,
    }
    settings = parse(values, lambda key: OPTIONS.get(key, "made here"))
    apply_radiumd(settings, w)
    w.write(UNIT, unit_text(prefix))
    w.write(SYSUSERS, (resources.files("radium.appliance") / "units" / "radium.sysusers").read_text())
    make_user(root, w)
    return HostSetup(
        name=settings.name,
        port=settings.listen_port,
        server_public_key=settings.server_public_key,
        changed=w.changed,
        unit="/" + str(UNIT),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="radium-appliance-setup",
        description="Make this Linux host a Radium appliance: radiumd's configuration, keys and unit.",
    )
    add = parser.add_argument
    add("--name", required=True, help="the appliance's name (as clients and operators see it)")
    add(
        "--admin-key",
        required=True,
        help="the operator's CURVE public key (Z85, 40 characters; --admin-key=KEY when it begins with -)",
    )
    add("--admin-name", default="operator", help="the operator key's name (default operator)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"radiumd's TCP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--metrics-listen", default="127.0.0.1:9450", help="HOST:PORT of the Prometheus metrics, or off"
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="write under this folder (default /)")
    parser.add_argument("--json", action="store_true", help="say what was done as JSON")
    args = parser.parse_args(argv)

    def body() -> int:
        done = setup(
            args.name,
            args.admin_key,
            admin_name=args.admin_name,
            port=args.port,
            metrics_listen=args.metrics_listen,
            root=args.root.resolve(),
        )
        if args.json:
            print(json.dumps(asdict(done), indent=2))
            return 0
        print(
            f"appliance {done.name}: radiumd on port {done.port}, server public key {done.server_public_key}"
        )
        for path in done.changed:
            print(f"wrote {path}")
        if not done.changed:
            print("nothing to change")
        print("start it with: systemctl daemon-reload && systemctl enable --now radiumd")
        return 0

    return guarded("radium-appliance-setup", body)


if __name__ == "__main__":
    sys.exit(main())
