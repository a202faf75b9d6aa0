"""Pushing a client configuration into a VM over SSH (`radium-admin register-vm --ssh`), with paramiko.

The server's host key is checked against a known_hosts file, as OpenSSH does:
an unknown key is refused (`HostKeyRefused`, saying how to check and add it)
unless `accept_new` is asked for, which records it (like OpenSSH's
``StrictHostKeyChecking=accept-new``); a key that differs from the recorded one
is always refused.  Never paramiko's AutoAddPolicy.

`push_config` sends the guestinfo keys (`radium.remoting.guestinfo`) on the
command's standard input, never on a command line, into a private temporary
folder that the remote `radium configure --from-guestinfo` reads
(``RADIUM_GUESTINFO_DIR``) and that is removed at once; so the VM installs the
configuration exactly as it would from guestinfo.  Then `radium health` runs there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from radium.remoting import ClientConfig, RadiumError, UsageError, guestinfo

__all__ = [
    "HostKeyRefused",
    "PushResult",
    "SshError",
    "SshTarget",
    "connect",
    "fingerprint",
    "push_config",
]

CONNECT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 120.0
#: Added to the remote PATH, where `radium` is usually installed (pip --user, /usr/local).
REMOTE_PATH = "$PATH:/usr/local/bin:$HOME/.local/bin"


class SshError(RadiumError):
    """The SSH connection, the login, or a command run over it failed."""

    code = "ssh"
    exit_code = 69


class HostKeyRefused(SshError):
    """The server's host key is unknown or differs from the recorded one."""

    code = "ssh-host-key"
    exit_code = 77


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> SshTarget:
        """``USER@HOST``, ``USER@HOST:PORT``, ``USER@[V6ADDR]:PORT``."""
        match = re.fullmatch(r"([^@\s]+)@(\[[0-9A-Fa-f:.]+\]|[^:@\s\[\]]+)(?::(\d{1,5}))?", text)
        if not match or (match.group(3) and not 0 < int(match.group(3)) < 65536):
            raise UsageError(f"--ssh: expected USER@HOST or USER@HOST:PORT, got {text!r}")
        host = match.group(2).strip("[]")
        return cls(match.group(1), host, int(match.group(3) or 22))

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port != 22 else "")


class PushResult(msgspec.Struct, kw_only=True):
    """What happened on the VM."""

    target: str
    config: str  #: the client configuration file written there
    healthy: bool
    health: Any  #: `radium health --json` as the VM printed it (None when it printed no JSON)
    health_exit: int
    error: str | None = None


def fingerprint(key: Any) -> str:
    """OpenSSH's fingerprint of a paramiko key: ``SHA256:…`` (base64, unpadded)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def default_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def _policy(target: SshTarget, known_hosts: Path, accept_new: bool) -> Any:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown host key: refuse, or with accept_new record it in known_hosts."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            what = f"{key.get_name()} {fingerprint(key)}"
            kind = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key.get_name(), "ecdsa")
            if not accept_new:
                port = f" -p {target.port}" if target.port != 22 else ""
                raise HostKeyRefused(
                    f"the host key of {target.known_hosts_name} ({what}) is not in {known_hosts}: "
                    f"check it (on the VM: ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub), "
                    f"then add it (ssh-keyscan{port} {target.host} >> {known_hosts}) "
                    "or pass --accept-new-host-key"
                )
            known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(f"{target.known_hosts_name} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(target.known_hosts_name, key.get_name(), key)

    return Policy()


def connect(
    target: SshTarget,
    *,
    key_file: Path | None = None,
    known_hosts: Path | None = None,
    accept_new: bool = False,
    timeout: float = CONNECT_TIMEOUT,
) -> Any:
    """An SSH connection (a `paramiko.SSHClient`) to `target`, its host key checked.

    Authenticates with `key_file`, else the SSH agent and the usual ~/.ssh keys.
    """
    try:
        import paramiko
    except ImportError:
        raise UsageError("--ssh needs paramiko, which is missing from this installation of radium") from None

    known_hosts = Path(known_hosts) if known_hosts is not None else default_known_hosts()
    client = paramiko.SSHClient()
    if known_hosts.exists():
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise SshError(f"cannot read {known_hosts}: {exc}") from None
    client.set_missing_host_key_policy(_policy(target, known_hosts, accept_new))
    where = f"ssh {target}"
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            key_filename=str(key_file) if key_file else None,
            allow_agent=key_file is None,
            look_for_keys=key_file is None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except HostKeyRefused:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRefused(
            f"the host key of {target.known_hosts_name} has CHANGED: it presents {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, {known_hosts} records {fingerprint(exc.expected_key)}. Someone may be "
            f"intercepting the connection; if the VM was reinstalled, check the new key and run "
            f"ssh-keygen -f {known_hosts} -R '{target.known_hosts_name}'"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        how = f"key {key_file}" if key_file else "the SSH agent and ~/.ssh keys"
        raise SshError(f"{where}: login refused with {how}: {exc}") from None
    except (paramiko.SSHException, TimeoutError) as exc:
        client.close()
        raise SshError(f"{where}: {exc or type(exc).__name__}") from None
    except OSError as exc:
        client.close()
        raise SshError(f"{where}: cannot connect: {exc.strerror or exc}") from None
    except Exception as exc:  # paramiko raises plain exceptions for unusable key files
        client.close()
        raise SshError(f"{where}: {type(exc).__name__}: {exc}") from None
    return client


def _run(client: Any, command: str, stdin: str = "") -> tuple[int, str, str]:
    try:
        channel_in, out, err = client.exec_command(command, timeout=COMMAND_TIMEOUT)
        if stdin:
            channel_in.write(stdin)
        channel_in.channel.shutdown_write()
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        return out.channel.recv_exit_status(), stdout, stderr
    except (OSError, TimeoutError) as exc:
        raise SshError(f"running `{command.splitlines()[0]}` over SSH: {exc}") from None
    except Exception as exc:  # paramiko.SSHException and kin
        raise SshError(f"running a command over SSH: {type(exc).__name__}: {exc}") from None


def _install_script(radium: str) -> str:
    """A POSIX sh script: guestinfo key/value line pairs on stdin → `radium configure --from-guestinfo`."""
    return (
        "set -eu\n"
        f'PATH="{REMOTE_PATH}"; export PATH\n'
        "umask 077\n"
        "d=$(mktemp -d)\ntrap 'rm -rf \"$d\"' EXIT\n"
        "while IFS= read -r key && IFS= read -r value; do\n"
        '  case "$key" in guestinfo.radium.*) ;; *) echo "unexpected key $key" >&2; exit 2;; esac\n'
        '  printf \'%s\' "$value" > "$d/$key"\n'
        "done\n"
        f'RADIUM_GUESTINFO_DIR="$d" {radium} configure --from-guestinfo --replace --json\n'
    )


def _error_text(stdout: str, stderr: str, status: int) -> str:
    """The error a remote radium reported (its JSON error), else the last line it printed."""
    try:
        return str(json.loads(stdout)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        lines = (stderr or stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {status}"


def push_config(client: Any, target: SshTarget, config: ClientConfig, radium: str = "radium") -> PushResult:
    """Install `config` as the client configuration of the user `client` is logged in as; run `radium health`.

    `radium` is the command that runs radium there (a path, or a name found on
    the PATH, to which /usr/local/bin and ~/.local/bin are added).
    """
    values = guestinfo.encode(config)
    for k, v in values.items():
        if "\n" in v or "\r" in v:  # cannot happen with valid keys and compact JSON; the script relies on it
            raise UsageError(f"{k}: a guestinfo value must be one line")
    payload = "".join(f"{k}\n{v}\n" for k, v in values.items())
    radium_cmd = shlex.quote(radium)
    status, stdout, stderr = _run(client, _install_script(radium_cmd), payload)
    if status != 0:
        raise SshError(
            f"ssh {target}: `radium configure --from-guestinfo` failed (exit {status}): "
            f"{_error_text(stdout, stderr, status)}"
        )
    try:
        written = str(json.loads(stdout)["config"])
    except (ValueError, KeyError, TypeError):
        written = "?"
    status, stdout, stderr = _run(client, f'PATH="{REMOTE_PATH}"; export PATH\n{radium_cmd} health --json')
    try:
        health = json.loads(stdout)
    except ValueError:
        health = None
    healthy = status == 0 and isinstance(health, dict) and bool(health.get("healthy"))
    error = None
    if not healthy:
        error = _error_text(stdout, stderr, status)
        if isinstance(health, dict) and "appliances" in health:
            bad = [
                f"{a['appliance']}: {a.get('error')}" for a in health["appliances"] if not a.get("healthy")
            ]
            error = "; ".join(bad) or error
    return PushResult(
        target=str(target), config=written, healthy=healthy, health=health, health_exit=status, error=error
    )
