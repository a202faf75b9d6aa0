"""How each folder's face (its package `__init__`) exports names without importing them all at once.

A face lists its public names, each with the module that defines it; a name is
imported the first time it is used.  So `radium run` (whose start-up imports
`radium.remoting` and nothing heavy) and `radium-admin version` do not pay for
ZeroMQ, msgspec or pyVmomi, and the face can still be the one door to its folder.

    EXPORTS = {"VERSION": "._version", "collect_inventory": ".inventory:collect"}
    __getattr__, __dir__ = lazy(__name__, EXPORTS)
    __all__ = sorted(EXPORTS)

A target is ``MODULE`` (the attribute has the exported name), ``MODULE:ATTRIBUTE``
(exported under another name), or ``MODULE:`` (the module itself, as a namespace).
"""

import sys

# Imported by every `radium run`: nothing here may cost its start-up (typing takes ~8 ms; mypy
# reads TYPE_CHECKING by its name, and the annotations are strings).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = ["lazy"]


def lazy(
    package: "str", exports: "Mapping[str, str]"
) -> "tuple[Callable[[str], Any], Callable[[], list[str]]]":
    """`__getattr__` and `__dir__` for the face `package`, resolving `exports` on first use."""

    def __getattr__(name: "str") -> "Any":
        try:
            target = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        import importlib

        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name, package)
        value = module if target.endswith(":") else getattr(module, attribute or name)
        setattr(sys.modules[package], name, value)  # the next use is a plain attribute
        return value

    def __dir__() -> "list[str]":
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
