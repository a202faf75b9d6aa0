"""Finding hosts, VMs and devices by the name an operator typed, with close matches when it fails."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

from .errors import NotFound

__all__ = ["closest", "resolve"]

T = TypeVar("T")


def closest(name: str, known: Iterable[str], n: int = 5) -> list[str]:
    """Up to `n` names in `known` that look like `name` (case-insensitive, best first)."""
    names = list(known)
    by_lower: dict[str, str] = {}
    for k in names:
        by_lower.setdefault(k.lower(), k)
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    # A name that contains what was typed (a prefix, a short name) is a match too.
    if len(found) < n and len(name) >= 2:
        found += [k for k in sorted(by_lower) if name.lower() in k and k not in found][: n - len(found)]
    return [by_lower[k] for k in found]


def resolve(kind: str, name: str, candidates: Mapping[str, T], where: str = "") -> T:
    """The candidate called `name` (exactly, else the only case-insensitive match).

    Otherwise raise `NotFound` naming the close matches, or, when none is close,
    the known names (a few of them).
    """
    if name in candidates:
        return candidates[name]
    folded = [k for k in candidates if k.lower() == name.lower()]
    if len(folded) == 1:
        return candidates[folded[0]]
    matches = closest(name, candidates)
    place = f" {where}" if where else ""
    if matches:
        hint = "close matches: " + ", ".join(matches)
    elif candidates:
        known = sorted(candidates)
        more = f", … ({len(known)} in all)" if len(known) > 8 else ""
        hint = f"known {kind}s: " + ", ".join(known[:8]) + more
    else:
        hint = f"there are no {kind}s"
    raise NotFound(f"no {kind} named {name!r}{place} ({hint})", kind=kind, name=name, matches=matches)
