"""What makes a VM a Radium appliance, as the other folders see it: this module's names are its face.

    from radium import appliance

    problems = appliance.validate_package(Path("radium-appliance.ova"))   # [] when fit to deploy
    settings = appliance.parse_properties({"radium.name": "gpu1", ...})    # the first boot's input, checked

- **the package**: `validate_package`, `read_descriptor` (an OVF or OVA), `write_ovf` / `write_ova`,
  `ovf_environment` (the document a VM is handed: guestinfo.ovfEnv, or ovf-env.xml on a CD-ROM);
- **the image**: `build_image(BuildRequest(...), progress)` makes the bootable OVA
  (`radium-admin appliance build`), raising `BuildError` naming the failed step;
- **the property contract** between a deploy and the first boot: `parse_properties` (raises
  `PropertyError` naming each bad property), `ApplianceSettings`, `GUESTINFO_PREFIX` (how a
  property travels as a guest variable of its own) and `SECRET_PROPERTIES` (never written as one).

The first boot itself (`radium-firstboot`, `firstboot.py`) and the units are the appliance's own.
"""

from radium.remoting import lazy_exports

TYPE_CHECKING = False

EXPORTS: dict[str, str] = {
    "validate_package": ".ovf",
    "read_descriptor": ".ovf",
    "write_ovf": ".ovf",
    "write_ova": ".ovf",
    "ovf_environment": ".ovf:environment",
    "parse_properties": ".properties:parse",
    "PropertyError": ".properties",
    "ApplianceSettings": ".properties:Settings",
    "GUESTINFO_PREFIX": ".properties",
    "SECRET_PROPERTIES": ".properties:SECRET",
    "BuildRequest": ".build",
    "BuildResult": ".build",
    "BuildError": ".build",
    "build_image": ".build:build",
}

__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:
    from .build import BuildError, BuildRequest, BuildResult
    from .build import build as build_image
    from .ovf import environment as ovf_environment
    from .ovf import read_descriptor, validate_package, write_ova, write_ovf
    from .properties import GUESTINFO_PREFIX, PropertyError
    from .properties import SECRET as SECRET_PROPERTIES
    from .properties import Settings as ApplianceSettings
    from .properties import parse as parse_properties
