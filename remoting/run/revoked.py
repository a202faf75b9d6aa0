"""What an appliance keeps of a client whose enrolment was revoked, removed.

A client's runs leave, beside the shared content store, its warm tree (run/warmtree.py),
its kept listings (run/listings.py) and its tenant record (run/tenants.py): all of it
describes that client's files, so none of it should outlive the client's key.  The fork
server (root, as these are) sweeps them when radiumd starts, right after radiumd revokes a
key, and when radiumd is idle (a key file removed by hand is seen then).  Which clients are
enrolled it reads itself from the key folder in its settings; radiumd only says "sweep".
A group's record (`[run] tenant_groups`) stays: the group's other clients share it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

from .._keys import KeyDirectory
from .channel import Settings
from .warmtree import WarmTree

log = logging.getLogger(__name__)


def forget_revoked(settings: Settings, lock_wait: float = 10.0) -> list[str]:
    """Remove what this appliance keeps of clients no longer enrolled: their warm trees (run/
    warmtree.py), kept listings and own tenant records.  Done by root (the fork server) when
    radiumd starts, after it revokes a key and when it is idle; the enrolled keys are read here,
    never taken from radiumd.  A warm tree a run still holds is left for the next sweep.
    Returns the clients whose things were removed."""
    if settings.clients_dir is None or not os.path.isdir(settings.clients_dir):
        return []  # no key folder to judge by: remove nothing (never everything)
    keys = KeyDirectory(Path(settings.clients_dir), "client")
    enrolled = set(keys.names())
    store = Path(settings.store_dir)
    kept: dict[str, list[Path]] = {}
    for folder, suffix in ((store / "listings", ".idx"), (store / "tenants", ".chunks")):
        for path in _entries(folder):
            if path.name.endswith(suffix):
                kept.setdefault(path.name.removesuffix(suffix), []).append(path)
    warm = Path(settings.warm_dir) if settings.warm_dir else None
    trees = {p.name: p for p in _entries(warm)} if warm else {}
    forgotten = []
    for name, folder in trees.items():
        if name.startswith(".gone-"):  # a removal cut short
            shutil.rmtree(folder, ignore_errors=True)
    for client in sorted((set(kept) | set(trees)) - enrolled):
        if client.startswith((".", "group:")):
            continue
        try:
            tree = trees.get(client)
            due = functools.partial(_revoked, keys, client)
            if tree is not None and not WarmTree(tree, 0).remove(still_due=due, wait=lock_wait):
                continue  # a run holds it (or the client was enrolled again): the next sweep
            for path in kept.get(client, []):
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove what revoked client %s left: %s", client, exc)
            continue
        forgotten.append(client)
    return forgotten


def _revoked(keys: KeyDirectory, client: str) -> bool:
    return client not in keys.names()


def _entries(folder: Path | None) -> list[Path]:
    try:
        return sorted(folder.iterdir()) if folder is not None else []
    except OSError:
        return []
