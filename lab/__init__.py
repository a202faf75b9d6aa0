"""The lab, as the other folders see it: a real appliance on this machine and a vCenter around it.

    from radium.lab import Lab

    status = Lab().up()          # radiumd in a network namespace, the vCenter simulator, profiles
    print(status.address, status.healthy)
    Lab().down()

`radium-admin lab up|down|status` is this, rendered.  `netns` (network-namespace
hosts joined by shaped veth pairs) is what the tests and benchmarks build their
topologies with.
"""

from radium.remoting import lazy_exports

TYPE_CHECKING = False

EXPORTS: dict[str, str] = {
    "Lab": ".lab",
    "LabError": ".lab",
    "LabStatus": ".lab",
    "netns": ".netns:",
}

__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:
    from . import netns
    from .lab import Lab, LabError, LabStatus
