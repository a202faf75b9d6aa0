"""What the client serves to its runs: everything its user can read, except secrets.

The appliance asks the client for whatever path the remote process touches, so
without a policy a compromised appliance could read every file the user can: SSH and
cloud keys, Radium's own secret key.  `ExportPolicy` is the client's answer, enforced
by its file server (`files.FileServer`) on every request — lookups, listings, the
first request's walk, chunk reads — and never left to the appliance:

- denied paths look absent (ENOENT; left out of listings and their digests);
- a path is judged by where it really is: its folder's canonical path (symlinks and
  `..` resolved) plus its name, so a symlink or a `..` into a denied place is denied;
- and by what it is: the inodes of the denied folders and files (walked when the policy
  is made) are denied wherever they show up — a bind mount of `~/.ssh` elsewhere, a hard
  link to a key in the project;
- the longest matching rule wins, so an exception (`allow`) inside a denied folder serves
  that part of it (the folders above it are shown, holding only what is excepted), and a
  denial inside an exception hides again.

Rules are absolute paths, `~` for the user's home; a `*` or `?` is a glob, expanded when
the policy is made.  `DEFAULT_DENY` holds the usual places of credentials; the client
configuration's `[exports]` (`deny`, `allow`: the user's, and the operator's in
/etc/radium/client.toml) adds to it, and the client's own configuration and state are
always denied.  `radium run --show-exports` prints the result.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# The usual places of secrets, relative to a home folder ("~/") or absolute.
DEFAULT_DENY = (
    "~/.ssh",
    "~/.gnupg",
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.config/gh",
    "~/.config/radium",
    "~/.local/state/radium",
    "~/.kube/config",
    "~/.docker/config.json",
    "~/.netrc",
    "~/.git-credentials",
    "~/.pgpass",
    "~/.pypirc",
    "~/.npmrc",
    "~/.vault-token",
    "~/.password-store",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh/ssh_host_*_key",
    "/etc/radium",
)
WALK_LIMIT = 20_000  # entries walked per denied folder to learn its inodes


@dataclass(frozen=True)
class Rule:
    path: bytes  # canonical, absolute
    deny: bool
    source: str  # where it came from, for --show-exports


def _canonical(path: bytes) -> bytes:
    return os.fsencode(os.path.realpath(path))


def _under(path: bytes, top: bytes) -> bool:
    return top == b"/" or path == top or path.startswith(top + b"/")


@dataclass
class ExportPolicy:
    rules: list[Rule] = field(default_factory=list)  # shortest path first
    always: list[bytes] = field(default_factory=list)  # denied whatever the rules say
    inodes: set[tuple[int, int]] = field(default_factory=set)  # denied (st_dev, st_ino)
    _folders: dict[bytes, tuple[bytes, bool]] = field(default_factory=dict)  # real -> (canonical, denied)

    @classmethod
    def make(
        cls,
        homes: Iterable[str],
        deny: Iterable[tuple[str, str]] = (),
        allow: Iterable[tuple[str, str]] = (),
        always: Iterable[str] = (),
    ) -> ExportPolicy:
        """The policy for a user whose home folders are `homes`: the defaults, `deny` and
        `allow` as (rule, source) pairs, and `always` (the client's own configuration and
        state, denied whatever the rules say).  ValueError for a rule that is not a path."""
        homes = [h for h in dict.fromkeys(homes) if h]
        rules: dict[tuple[bytes, bool], Rule] = {}
        for rule, is_deny, source in [
            *((r, True, "default") for r in DEFAULT_DENY),
            *((r, True, src) for r, src in deny),
            *((r, False, src) for r, src in allow),
        ]:
            for path in _expand(rule, homes):
                rules[(path, is_deny)] = Rule(path, is_deny, source)
        denied = [r.path for r in rules.values() if r.deny]
        # An exception means something only inside a denied place (it is not a whitelist).
        kept = [r for r in rules.values() if r.deny or any(_under(r.path, d) and r.path != d for d in denied)]
        policy = cls(
            rules=sorted(kept, key=lambda r: (len(r.path), not r.deny)),
            always=[_canonical(os.fsencode(p)) for p in always],
        )
        policy._learn_inodes()
        return policy

    def _learn_inodes(self) -> None:
        """The inodes of what is denied, to know it wherever else it shows up."""
        for top in [r.path for r in self.rules if r.deny] + self.always:
            try:
                st = os.lstat(top)
            except OSError:
                continue
            self.inodes.add((st.st_dev, st.st_ino))
            walked = 0
            for folder, dirs, files in os.walk(top) if stat.S_ISDIR(st.st_mode) else ():
                for name in dirs + files:
                    path = os.path.join(folder, name)
                    try:
                        child = os.lstat(path)
                    except OSError:
                        continue
                    if self._decision(path) is not False and not stat.S_ISLNK(child.st_mode):
                        self.inodes.add((child.st_dev, child.st_ino))
                walked += len(dirs) + len(files)
                if walked > WALK_LIMIT:
                    break

    def _decision(self, canonical: bytes) -> bool | None:
        """By the rules: True denied, False an exception, None no rule over it."""
        if any(_under(canonical, a) for a in self.always):
            return True
        decision = None
        for rule in self.rules:  # shortest first: a longer match overrides
            if _under(canonical, rule.path):
                decision = rule.deny
        return decision

    def _folder(self, real: bytes) -> tuple[bytes, bool]:
        """A real folder's canonical path, and whether it or a folder above it is a denied
        inode (a denied folder reached another way: a bind mount)."""
        known = self._folders.get(real)
        if known is not None:
            return known
        canonical = _canonical(real)
        try:
            st = os.stat(canonical)
            denied = (st.st_dev, st.st_ino) in self.inodes
        except OSError:
            denied = False
        if not denied and canonical != b"/":
            denied = self._folder(os.path.dirname(canonical))[1]
        if len(self._folders) > 100_000:
            self._folders.clear()
        self._folders[real] = (canonical, denied)
        return canonical, denied

    def denies(self, real: bytes, st: os.stat_result | None = None) -> bool:
        """Whether the real path `real` (described by `st`, its lstat, when known) is withheld."""
        if real == b"/":
            return False
        folder, name = os.path.split(real)
        return self.entries(folder or b"/")(name, st)

    def entries(self, real_folder: bytes) -> Callable[[bytes, os.stat_result | None], bool]:
        """A test of one folder's entries: `hidden(name, st)` (st: the entry's lstat, or None)."""
        canonical, folder_denied = self._folder(real_folder)
        relevant = [r for r in self.always if _under(r, canonical) or _under(canonical, r)]
        relevant += [r.path for r in self.rules if _under(r.path, canonical) or _under(canonical, r.path)]
        inodes = self.inodes

        def hidden(name: bytes, st: os.stat_result | None = None) -> bool:
            if relevant:  # a rule over or under this folder: judge the path
                path = os.path.join(canonical, name)
                decision = self._decision(path)
                if decision is True and self._exception_below(path):
                    return False  # a denied folder shown for its exceptions; its other entries stay hidden
                if decision is not None:
                    return decision
            if folder_denied:
                return True
            if st is None:
                try:
                    st = os.lstat(os.path.join(real_folder, name))
                except OSError:
                    return False  # absent anyway
            return (st.st_dev, st.st_ino) in inodes

        return hidden

    def _exception_below(self, canonical: bytes) -> bool:
        return any(not r.deny and r.path != canonical and _under(r.path, canonical) for r in self.rules)

    def describe(self) -> list[str]:
        """Lines for `radium run --show-exports`."""
        lines = ["Served to remote runs: every file this user can read, except (they look absent):"]
        lines += [f"  {os.fsdecode(p)}  (the client's own configuration and state)" for p in self.always]
        lines += [f"  {os.fsdecode(r.path)}  ({r.source})" for r in self.rules if r.deny]
        allowed = [r for r in self.rules if not r.deny]
        if allowed:
            lines.append("Served although under a denied folder (exceptions):")
            lines += [f"  {os.fsdecode(r.path)}  ({r.source})" for r in allowed]
        lines.append(
            "A symlink, '..', bind mount or hard link into a denied place is denied too. More rules: "
            "[exports] deny = [...] and allow = [...] in the client configuration."
        )
        return lines


def _expand(rule: str, homes: list[str]) -> list[bytes]:
    """A rule's canonical paths: `~` for each home, globs expanded (a glob matching nothing: none)."""
    if rule.startswith("~/") or rule == "~":
        paths = [os.path.join(home, rule[2:]) for home in homes]
    elif rule.startswith("/"):
        paths = [rule]
    else:
        raise ValueError(f"export rule {rule!r}: give an absolute path or one starting with ~/")
    out = []
    for path in paths:
        path = os.path.normpath(path)
        if any(c in path for c in "*?["):
            out += [_canonical(os.fsencode(p)) for p in sorted(glob.glob(path))]
        else:
            out.append(_canonical(os.fsencode(path)))
    return out
