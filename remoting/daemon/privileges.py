"""radiumd's own user: started as root, it keeps root only where runs need it.

`radiumd --user radium` (as the shipped unit starts it) does, as root:

1. give the folders it writes to that user (its state, the content store's folders,
   the enrolled keys' folders), as systemd's StateDirectory= does for User=, and clear
   the run folders a crash left behind;
2. read its server key (root's, 0600: the unprivileged daemon cannot read it again);
3. start the supervisors' fork server, the one part that stays root: it mounts each
   run's file systems and maps its ids (see run/forkserver.py);

then drops to the user for good (`drop`): every id set, the user's groups (render and
video for GPU nodes), no capability left, and checked.  What faces the network (CURVE,
the protocol's decoding, enrolment, leases) thus runs unprivileged; it asks the fork
server, over a socket pair only they share, to fork, kill and clean up after a run.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._errors import RadiumError


class UserError(RadiumError):
    code = "bad-user"
    exit_code = 78  # EX_CONFIG


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def resolve(name: str) -> User:
    """The user radiumd is to drop to, or a clear error."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UserError(
            f"--user {name}: there is no such user on this machine; create it (the image and "
            f"radium-appliance-setup do: systemd-sysusers with appliance/units/radium.sysusers), "
            f"or start radiumd without --user"
        ) from None
    if entry.pw_uid == 0:
        raise UserError(f"--user {name}: that is root; name an unprivileged user, or leave --user out")
    return User(name, entry.pw_uid, entry.pw_gid)


def needs_drop(user: User) -> bool:
    """Whether radiumd must still drop to `user`: it is root now, or already that user."""
    if os.geteuid() == user.uid:
        return False
    if os.geteuid() != 0:
        raise UserError(
            f"--user {user.name}: radiumd must be started as root to drop to {user.name} "
            f"(it starts its supervisors' fork server as root first); it runs as uid {os.geteuid()}"
        )
    return True


def clear_runs(runs: Path) -> None:
    """Remove the run folders a previous radiumd left (a crash's: their mounts went with
    their supervisors' mount namespaces)."""
    if runs.is_dir():
        for leftover in runs.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)


def hand_over(user: User, state_dir: Path, key_dirs: list[Path], cache: Path | None = None) -> None:
    """Give `user` the folders radiumd writes: the content store's, the keys' folders, and its
    own cache (`cache`: systemd's CacheDirectory=, where the unit points the device runtimes'
    kernel caches), whole.

    The state folder itself stays root's, searchable by all (0711) so that radiumd reaches
    the store and a run's process (root's ids until it takes the client's) its run folder;
    the run folders' folder stays root's alone: radiumd cannot touch a run's files.
    """
    for folder in (state_dir, state_dir / "cas", *key_dirs):
        folder.mkdir(parents=True, exist_ok=True)
    os.chown(state_dir, 0, 0)
    state_dir.chmod(0o711)
    runs = state_dir / "runs"
    if runs.is_dir() and not runs.is_symlink():
        os.chown(runs, 0, 0)
        runs.chmod(0o700)
    owned = [state_dir / "cas"]
    # The store's subfolders (chunks are written by root's supervisors into folders radiumd
    # owns, so radiumd may evict them; their files stay root's, readable by all).
    owned += [p for p in (state_dir / "cas").iterdir() if p.is_dir() and not p.is_symlink()]
    for folder in key_dirs:  # enrolment writes and removes keys here, and reads them all
        owned += [folder, *(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())]
    if cache is not None and cache.is_dir():
        owned.append(cache)
        for top, dirs, files in os.walk(cache):
            owned += [Path(top, name) for name in (*dirs, *files)]
    for path in owned:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)


def drop(user: User) -> None:
    """Become `user` for good, with its groups and no capabilities; raise if any is left."""
    os.initgroups(user.name, user.gid)
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)  # from root to non-root: every capability goes
    status = Path("/proc/self/status").read_text()
    caps = {
        line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines() if line.startswith("Cap")
    }
    if os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3:
        raise UserError(f"could not become {user.name}: ids {os.getresuid()} {os.getresgid()}")
    if caps.get("CapEff") or caps.get("CapPrm") or caps.get("CapAmb"):
        raise UserError(f"could not become {user.name}: capabilities left ({caps})")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise UserError(f"could not become {user.name}: it could become root again")
