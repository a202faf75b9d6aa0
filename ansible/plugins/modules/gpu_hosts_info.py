#!/usr/bin/python
# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""radium.estate.gpu_hosts_info: the hosts of a vCenter and their accelerators."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_hosts_info
short_description: The hosts of a vCenter and their accelerators (GPUs), with their passthrough state
description:
  - Reads every host, its cluster and state, and its accelerators (vendor, model, memory,
    passthrough capable, enabled and active, and the powered-on VM holding each), in one
    inventory read, as C(radium-admin hosts --json) gives it.
  - Changes nothing; runs in check mode.
version_added: "0.1.0"
author: Radium developers (@radium-dev)
options:
  hosts:
    description:
      - Return only these hosts (by name); all of them when not given.
    type: list
    elements: str
extends_documentation_fragment:
  - radium.estate.vcenter
"""

EXAMPLES = r"""
- name: Find the GPU hosts
  radium.estate.gpu_hosts_info:
  delegate_to: localhost
  register: estate

- name: Enable passthrough where a host has capable GPUs not yet enabled
  radium.estate.passthrough:
    host: "{{ item.name }}"
    devices: all
    state: enabled
  loop: "{{ estate.hosts | selectattr('accelerators') | list }}"
  delegate_to: localhost
"""

RETURN = r"""
hosts:
  description: Every host (or those asked for), by name.
  returned: always
  type: list
  elements: dict
  sample:
    - name: esx1
      id: host-21
      cluster: gpu-cluster
      connection_state: connected
      power_state: poweredOn
      maintenance_mode: false
      accelerators:
        - address: "0000:3b:00.0"
          vendor: NVIDIA
          model: Tesla V100 PCIe 32GB
          memory_gib: 32
          capable: true
          enabled: true
          active: true
          reboot_pending: false
          held_by: null
          free: true
free_gpus:
  description: How many DirectPath GPUs are free for an appliance (enabled, active, not held).
  returned: always
  type: int
  sample: 3
"""

from ansible_collections.radium.estate.plugins.module_utils.estate import (  # noqa: E402
    new_module,
    plain,
    run,
    vcenter,
    vcenter_session,
)


def main() -> None:
    module = new_module({"hosts": {"type": "list", "elements": "str"}}, supports_check_mode=True)

    def body() -> dict:
        with vcenter_session(module) as session:
            hosts = vcenter.collect_inventory(session).hosts
        wanted = module.params["hosts"]
        if wanted:
            missing = sorted(set(wanted) - {h.name for h in hosts})
            if missing:
                known = ", ".join(h.name for h in hosts) or "none"
                module.fail_json(msg=f"no host named {', '.join(missing)} in vCenter (hosts: {known})")
            hosts = [h for h in hosts if h.name in wanted]
        out = plain(hosts)
        for host, shown in zip(hosts, out, strict=True):  # the model's derived states, for `when:`
            for d, device in zip(host.accelerators, shown["accelerators"], strict=True):
                device.update(reboot_pending=d.reboot_pending, free=d.free)
        free = sum(1 for h in hosts for d in h.accelerators if d.free)
        return {"changed": False, "hosts": out, "free_gpus": free}

    run(module, body)


if __name__ == "__main__":
    main()
