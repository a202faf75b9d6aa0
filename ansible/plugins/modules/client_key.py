#!/usr/bin/python
# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""radium.estate.client_key: a client key authorised on an appliance, or not (machines outside vCenter)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: client_key
short_description: Enrol or revoke a client key on a Radium appliance
description:
  - For machines outside vCenter (for VMs, M(radium.estate.client_vm) does this and more).
  - O(state=present) authorises a key for O(name) on O(appliance) and writes the client's
    bundle (its key pair and the appliance, mode 0600) to O(bundle), as C(radium-admin enroll)
    does. When O(bundle) exists its key is kept (and the appliance added to it); when the
    appliance already accepts that key, nothing changes.
  - O(state=absent) removes the key of O(name) from O(appliance), as C(radium-admin revoke)
    does; nothing changes when it is not enrolled there.
  - O(appliance) is a radiumd configuration file on the machine running the module (the key
    goes into its keys folder), or an appliance's name or address in the operator
    configuration (enrolled over the network with the operator key).
version_added: "0.1.0"
author: Radium developers (@radium-dev)
options:
  name:
    description: The client's name (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  appliance:
    description:
      - A radiumd configuration file here, or an appliance's name or address in the operator configuration.
    type: str
    required: true
  bundle:
    description: Where the client's bundle is written (and read, when it exists). Required when present.
    type: path
  role:
    description: C(client), or C(admin) for an operator key.
    type: str
    choices: [client, admin]
    default: client
  address:
    description:
      - With a radiumd configuration file, the address clients dial (default - from its listen address).
    type: str
  state:
    description: Whether the key is to be authorised.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - radium.estate.vcenter.ADMIN
"""

EXAMPLES = r"""
- name: A workstation's key on gpu1, its bundle fetched to the workstation afterwards
  radium.estate.client_key:
    name: ws12
    appliance: gpu1
    bundle: "/srv/radium/bundles/ws12.radium.toml"
  delegate_to: localhost
"""

RETURN = r"""
enrolment:
  description: What was enrolled (never the secret key).
  returned: when a key was enrolled
  type: dict
  sample: {name: ws12, role: client, bundle: /srv/radium/bundles/ws12.radium.toml, appliance: gpu1}
"""

from pathlib import Path  # noqa: E402

from ansible_collections.radium.estate.plugins.module_utils.estate import new_module, run  # noqa: E402

try:
    from radium.remoting import UsageError, enroll, is_enrolled, revoke
except ImportError:  # new_module says so
    pass


def main() -> None:
    module = new_module(
        {
            "name": {"type": "str", "required": True},
            "appliance": {"type": "str", "required": True},
            "bundle": {"type": "path"},
            "role": {"type": "str", "choices": ["client", "admin"], "default": "client"},
            "address": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        uses_vcenter=False,
        admin=True,
        required_if=[("state", "present", ("bundle",))],
        supports_check_mode=True,
    )
    p = module.params
    bundle = Path(p["bundle"]) if p["bundle"] else None

    def body() -> dict:
        if p["state"] == "absent":
            # By name, whatever its key: exact for a radiumd configuration here, unknown over the
            # network (None), where the revocation itself says whether it was there.
            enrolled = is_enrolled(p["name"], p["appliance"], role=p["role"])
            if enrolled is False:
                return {"changed": False}
            if module.check_mode:  # (None: not knowable without the bundle; it may be)
                return {"changed": True}
            try:
                revoke(p["name"], p["appliance"], role=p["role"])
            except UsageError as exc:
                if enrolled is None and exc.message.startswith("no "):  # it was not enrolled there
                    return {"changed": False}
                raise
            return {"changed": True}
        if is_enrolled(p["name"], p["appliance"], bundle=bundle, role=p["role"]):
            return {"changed": False}
        if module.check_mode:
            return {"changed": True}
        if bundle is None:  # (required_if says so already)
            raise UsageError("state=present needs bundle: where the client's bundle is written")
        done = enroll(
            p["name"],
            p["appliance"],
            role=p["role"],
            address=p["address"],
            from_bundle=bundle if bundle.exists() else None,
            output=bundle,
        )
        return {"changed": True, "enrolment": done.summary()}

    run(module, body)


if __name__ == "__main__":
    main()
