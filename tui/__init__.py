"""The operator's console (`radium-admin tui`, `radium-tui`): this module's names are its face.

    from radium import tui, vcenter

    tui.Console(tui.Estate(vcenter.resolve(profile="lab"))).run()

`Estate` is the one interface the console's screens use: the vCenter library and
the remoting client API, called from worker threads.  The screens are in
`app.py` (the console), `views/` (a table each) and `forms.py`.
"""

from radium.remoting import lazy_exports

TYPE_CHECKING = False

EXPORTS: dict[str, str] = {
    "Console": ".app",
    "Estate": ".estate",
    "Snapshot": ".estate",
}

__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:
    from .app import Console
    from .estate import Estate, Snapshot
