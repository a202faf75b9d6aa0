#!/usr/bin/python
# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""radium.estate.passthrough: the wanted DirectPath passthrough state of a host's accelerators."""

from __future__ import annotations

DOCUMENTATION = r"""
module: passthrough
short_description: Enable or disable DirectPath I/O passthrough of a host's accelerators
description:
  - Sets the passthrough configuration of accelerators of one ESXi host, by PCI address or
    C(all) (of a vendor), as C(radium-admin passthrough enable|disable) does, with the same
    checks - an unknown address (close matches named), a device that is not
    passthrough-capable, or (when disabling) one held by a powered-on VM fails the task
    and changes nothing.
  - ESXi applies a change at the host's next reboot; the result says which hosts wait for one.
  - Changed only when a device's configured state changes. Check mode says what would change.
version_added: "0.1.0"
author: Radium developers (@radium-dev)
options:
  host:
    description: The ESXi host's name in vCenter.
    type: str
    required: true
  devices:
    description:
      - PCI addresses (C(0000:3b:00.0) or C(3b:00.0)), or C(all) - every accelerator of the host
        (passthrough-capable ones when enabling), of O(vendor) when given.
    type: list
    elements: str
    default: [all]
  vendor:
    description:
      - With C(all), only this vendor's accelerators - a name (C(NVIDIA), C(AMD), C(Intel);
        any case) or a PCI vendor id (C(0x10de)).
    type: str
  state:
    description: Whether passthrough is to be enabled or disabled.
    type: str
    choices: [enabled, disabled]
    default: enabled
extends_documentation_fragment:
  - radium.estate.vcenter
"""

EXAMPLES = r"""
- name: Every NVIDIA GPU of esx1 to passthrough
  radium.estate.passthrough:
    host: esx1
    vendor: NVIDIA
  delegate_to: localhost
  register: gpus

- name: Say which hosts must reboot
  ansible.builtin.debug:
    msg: "{{ gpus.note }}"
  when: gpus.reboot_pending
"""

RETURN = r"""
devices:
  description: Each device named, with its state before and after.
  returned: success
  type: list
  elements: dict
  sample:
    - address: "0000:3b:00.0"
      description: NVIDIA Tesla V100 PCIe 32GB
      enabled_before: false
      enabled: true
      active: false
      changed: true
      reboot_needed: true
reboot_pending:
  description: Whether the host must reboot before the configuration takes effect.
  returned: success
  type: bool
note:
  description: What to do when a reboot is pending; empty otherwise.
  returned: success
  type: str
"""

from ansible_collections.radium.estate.plugins.module_utils.estate import (  # noqa: E402
    new_module,
    plain,
    run,
    vcenter,
    vcenter_session,
)


def _vendor_matches(device, vendor: str | None) -> bool:
    if not vendor:
        return True
    v = vendor.strip().lower()
    return v in (device.vendor.lower(), device.vendor_id.lower()) or device.vendor.lower().startswith(v)


def main() -> None:
    module = new_module(
        {
            "host": {"type": "str", "required": True},
            "devices": {"type": "list", "elements": "str", "default": ["all"]},
            "vendor": {"type": "str"},
            "state": {"type": "str", "choices": ["enabled", "disabled"], "default": "enabled"},
        },
        supports_check_mode=True,
    )
    p = module.params
    enable = p["state"] == "enabled"

    def body() -> dict:
        with vcenter_session(module) as session:
            inv = vcenter.collect_inventory(session)
            host = inv.host(p["host"])
            addresses = [a for a in p["devices"] if a.lower() != "all"]
            if len(addresses) != len(p["devices"]):  # "all", of a vendor
                addresses += [
                    d.address
                    for d in host.accelerators
                    if _vendor_matches(d, p["vendor"]) and (d.capable or not enable)
                ]
            if not addresses:
                of = f" of vendor {p['vendor']}" if p["vendor"] else ""
                module.fail_json(msg=f"host {host.name} has no passthrough-capable accelerator{of}")
            change = vcenter.set_passthrough(
                session, host.name, addresses, enable, inv=inv, dry_run=module.check_mode
            )
        devices = plain(change.devices)
        result = {
            "changed": change.changed,
            "devices": devices,
            "reboot_pending": change.reboot_needed,
            "note": change.note,
        }
        if module._diff:
            result["diff"] = {
                "before": {d["address"]: "enabled" if d["enabled_before"] else "disabled" for d in devices},
                "after": {d["address"]: "enabled" if d["enabled"] else "disabled" for d in devices},
            }
        return result

    run(module, body)


if __name__ == "__main__":
    main()
