#!/usr/bin/python
# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""radium.estate.client_vm: a VM registered as a Radium client of some appliances, or not."""

from __future__ import annotations

DOCUMENTATION = r"""
module: client_vm
short_description: Register a VM as a Radium client of appliances, or unregister it
description:
  - O(state=present) registers the VM as C(radium-admin register-vm) does - one key pair,
    authorised on every appliance named (and revoked on those no longer named), written into
    the VM's guestinfo for C(radium configure --from-guestinfo), and the C(radium.client)
    attribute set. A VM already registered with exactly these appliances (and this client
    name, when given) is left as it is.
  - O(state=absent) revokes its key on every appliance and clears its guestinfo and attribute,
    as C(radium-admin unregister-vm) does; a VM not registered is left as it is.
  - Check mode says what would be done and does nothing.
version_added: "0.1.0"
author: Radium developers (@radium-dev)
options:
  vm:
    description: The VM's name in vCenter (or its managed object id).
    type: str
    required: true
  appliances:
    description:
      - The appliances it may use (names or addresses in the operator configuration).
      - Required when O(state=present).
    type: list
    elements: str
  client_name:
    description: The client's name on the appliances (default - the VM's name, made valid).
    type: str
  state:
    description: Whether the VM is to be registered.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=absent), clear the VM's registration even when an appliance cannot revoke its key.
    type: bool
    default: false
extends_documentation_fragment:
  - radium.estate.vcenter
  - radium.estate.vcenter.ADMIN
"""

EXAMPLES = r"""
- name: Every VM of the group a client of both appliances
  radium.estate.client_vm:
    vm: "{{ inventory_hostname }}"
    appliances: [gpu1, gpu2]
  delegate_to: localhost
"""

RETURN = r"""
client:
  description: The VM's registration as vCenter holds it now.
  returned: when registered
  type: dict
  sample: {vm: vm7, client: vm7, appliances: [gpu1, gpu2], power_state: poweredOn}
warnings_from_radium:
  description: What did not go as asked (an old key left authorised somewhere).
  returned: when something was done
  type: list
  elements: str
"""

from ansible_collections.radium.estate.plugins.module_utils.estate import (  # noqa: E402
    new_module,
    plain,
    run,
    vcenter,
    vcenter_session,
)


def main() -> None:
    module = new_module(
        {
            "vm": {"type": "str", "required": True},
            "appliances": {"type": "list", "elements": "str"},
            "client_name": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "force": {"type": "bool", "default": False},
        },
        admin=True,
        required_if=[("state", "present", ("appliances",))],
        supports_check_mode=True,
    )
    p = module.params

    def body() -> dict:
        with vcenter_session(module) as session:
            now = next((c for c in vcenter.list_clients(session) if p["vm"] in (c.vm, c.id)), None)
            if p["state"] == "absent":
                if now is None:
                    return {"changed": False}
                if module.check_mode:
                    return {"changed": True, "client": plain(now)}
                done = vcenter.unregister_vm(session, p["vm"], force=p["force"])
                return {"changed": True, "unregistered": plain(done), "warnings_from_radium": done.warnings}
            wanted = p["appliances"]
            same = (
                now is not None
                and sorted(now.appliances) == sorted(wanted)
                and (p["client_name"] is None or now.client == p["client_name"])
            )
            if same:
                return {"changed": False, "client": plain(now)}
            if module.check_mode:
                return {"changed": True, "client": plain(now) if now else None}
            done = vcenter.register_vm(session, p["vm"], wanted, client_name=p["client_name"])
            for warning in done.warnings:
                module.warn(warning)
            after = next((c for c in vcenter.list_clients(session) if c.vm == done.vm), None)
            result = {"changed": True, "registration": plain(done), "warnings_from_radium": done.warnings}
            if module._diff:
                result["diff"] = {
                    "before": {"appliances": sorted(now.appliances) if now else []},
                    "after": {"appliances": sorted(wanted)},
                }
            if after is not None:
                result["client"] = plain(after)
            return result

    run(module, body)


if __name__ == "__main__":
    main()
