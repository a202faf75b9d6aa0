"""The lab, as the other folders see it: a real appliance on this machine and a vCenter around it.

    from radium.lab import Lab

    status = Lab().up()          # radiumd in a network namespace, the vCenter simulator, profiles
    print(status.address, status.healthy)
    Lab().down()

`radium-admin lab up|down|status` is this, rendered (`lab up --vm`: the appliance is the built
image booted under qemu, `vm`, which the image's tests boot too).  `netns` (network-namespace
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
    "vm": ".vm:",
}

__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:
    from . import netns, vm
    from .lab import Lab, LabError, LabStatus
