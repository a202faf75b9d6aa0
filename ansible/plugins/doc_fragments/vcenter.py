# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The vCenter connection options every vCenter module of the collection shares."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  vcenter_url:
    description:
      - vCenter's address, C(https://vc.example/sdk) or a host name.
      - Resolved as C(radium-admin) resolves it, in this order - this option, the environment
        variable E(RADIUM_VCENTER_URL), the profile O(vcenter_profile), the active profile.
    type: str
  vcenter_user:
    description:
      - The vCenter user; else E(RADIUM_VCENTER_USER), else the profile's.
    type: str
  vcenter_password:
    description:
      - The vCenter password; else E(RADIUM_VCENTER_PASSWORD), the system keyring or the profile's
        password file. Never logged.
    type: str
  vcenter_ca:
    description:
      - A CA bundle that signed vCenter's certificate; else E(RADIUM_VCENTER_CA), else the system's CAs.
    type: path
  vcenter_thumbprint:
    description:
      - The SHA-256 thumbprint vCenter's certificate must have (pinning); else E(RADIUM_VCENTER_THUMBPRINT).
    type: str
  vcenter_insecure:
    description:
      - Do not verify vCenter's certificate (a lab only); else E(RADIUM_VCENTER_INSECURE).
    type: bool
    default: false
  vcenter_profile:
    description:
      - A profile saved with C(radium-admin profile save); else E(RADIUM_VCENTER_PROFILE).
    type: str
requirements:
  - The C(radium) Python package (with pyVmomi) in the Python that runs the module, usually the
    controller's (C(ansible_python_interpreter) of localhost).
notes:
  - "The modules run where the play runs them: use C(delegate_to: localhost), or a play on localhost."
"""

    ADMIN = r"""
options:
  admin_config:
    description:
      - The operator configuration (the operator key and the appliances it reaches); else
        E(RADIUM_ADMIN_CONFIG), else C(~/.config/radium/admin.toml), as for C(radium-admin).
    type: path
"""
