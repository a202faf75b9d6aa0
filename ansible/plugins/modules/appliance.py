#!/usr/bin/python
# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""radium.estate.appliance: a Radium appliance VM, deployed from its package, started or removed."""

from __future__ import annotations

DOCUMENTATION = r"""
module: appliance
short_description: Deploy a Radium GPU appliance into vCenter, start it, or remove it
description:
  - O(state=present) deploys the appliance from its package (OVA/OVF) onto a host with its
    GPUs passed through, exactly as C(radium-admin appliance deploy) does - the same options,
    checks, keys (the server key pair made here, the operator key recorded) and first-boot
    properties - unless a VM of that name is already a Radium appliance, which is then left
    as it is (its radiumd health is returned, and a warning says when it does not answer).
  - O(state=started) is O(state=present) and, if the appliance is powered off, powers it on.
  - O(state=absent) powers the appliance off, destroys it and drops it from the operator
    configuration, as C(radium-admin appliance remove) does.
  - Check mode says what would be done and does nothing.
version_added: "0.1.0"
author: Radium developers (@radium-dev)
options:
  name:
    description: The VM's name, which is also radiumd's name and the appliance's host name.
    type: str
    required: true
  state:
    description: What the appliance is to be.
    type: str
    choices: [present, started, absent]
    default: present
  host:
    description: The ESXi host whose GPUs it gets. Required to deploy.
    type: str
  package:
    description:
      - The appliance package - an C(.ova), an C(.ovf) with its files, or a folder with one.
      - Required to deploy.
    type: path
  gpus:
    description: C(all) (every assignable accelerator of the host) or PCI addresses.
    type: list
    elements: str
    default: [all]
  datastore:
    description: The datastore for its disk (default - the host's with the most free space).
    type: str
  network:
    description: The port group its NIC joins.
    type: str
  folder:
    description: A VM folder under the datacenter's, C(radium/gpu).
    type: str
  ip:
    description: C(dhcp) or a static C(ADDRESS/PREFIX).
    type: str
    default: dhcp
  gateway:
    description: The default gateway, with a static O(ip).
    type: str
  dns:
    description: DNS servers, comma-separated.
    type: str
  port:
    description: radiumd's port.
    type: int
    default: 7450
  wait:
    description: Wait for the appliance to get an address and for radiumd to answer the operator key.
    type: bool
    default: true
  timeout:
    description: How long to wait, in seconds.
    type: float
    default: 600
extends_documentation_fragment:
  - radium.estate.vcenter
  - radium.estate.vcenter.ADMIN
"""

EXAMPLES = r"""
- name: An appliance on each GPU host
  radium.estate.appliance:
    name: "gpu-{{ item }}"
    host: "{{ item }}"
    package: /srv/images/radium-appliance.ova
    network: gpu-net
  loop: "{{ groups['gpu_hosts'] }}"
  delegate_to: localhost

- name: Retire one
  radium.estate.appliance:
    name: gpu-esx3
    state: absent
  delegate_to: localhost
"""

RETURN = r"""
appliance:
  description: The appliance as vCenter holds it now (after a deploy, what the deploy did).
  returned: when it exists
  type: dict
  sample: {vm: gpu1, host: esx1, power_state: poweredOn, address: "tcp://10.0.0.5:7450", gpus: []}
healthy:
  description: Whether its radiumd answered the operator key with its devices (an existing appliance).
  returned: when it existed before
  type: bool
steps:
  description: The steps a deploy or removal went through, in order.
  returned: when something was done
  type: list
  elements: str
"""

from pathlib import Path  # noqa: E402

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
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "started", "absent"], "default": "present"},
            "host": {"type": "str"},
            "package": {"type": "path"},
            "gpus": {"type": "list", "elements": "str", "default": ["all"]},
            "datastore": {"type": "str"},
            "network": {"type": "str"},
            "folder": {"type": "str"},
            "ip": {"type": "str", "default": "dhcp"},
            "gateway": {"type": "str"},
            "dns": {"type": "str"},
            "port": {"type": "int", "default": 7450},
            "wait": {"type": "bool", "default": True},
            "timeout": {"type": "float", "default": 600.0},
        },
        admin=True,
        supports_check_mode=True,
    )
    p = module.params
    steps: list[str] = []

    def progress(event) -> None:
        if isinstance(event, vcenter.Step):
            steps.append(event.text)

    def body() -> dict:
        with vcenter_session(module) as session:
            try:
                existing = vcenter.find_appliance(session, p["name"])
            except vcenter.NotFound:
                existing = None
            if p["state"] == "absent":
                if existing is None:
                    return {"changed": False}
                if module.check_mode:
                    return {"changed": True, "appliance": plain(existing)}
                removal = vcenter.remove_appliance(session, p["name"], progress)
                return {"changed": True, "removed": plain(removal), "steps": steps}
            if existing is not None:
                return _keep(session, existing)
            return _deploy(session)

    def _keep(session, existing) -> dict:
        changed = False
        if p["state"] == "started":
            changed = vcenter.start_appliance(session, existing.vm, progress, dry_run=module.check_mode)
        result = {"changed": changed, "appliance": plain(existing), "steps": steps}
        if not module.check_mode and existing.power_state == "poweredOn":
            status = vcenter.appliance_status(session, existing.vm, timeout=10.0)
            result["healthy"] = status.healthy
            if not status.healthy:
                why = status.health.error or "no devices"
                module.warn(f"{existing.vm}: radiumd is not healthy ({why}); the appliance is left as it is")
        return result

    def _deploy(session) -> dict:
        missing = [k for k in ("host", "package") if not p[k]]
        if missing:
            module.fail_json(msg=f"to deploy appliance {p['name']}, give {' and '.join(missing)}")
        request = vcenter.DeployRequest(
            name=p["name"],
            host=p["host"],
            package=Path(p["package"]),
            gpus=",".join(p["gpus"]) if p["gpus"] != ["all"] else "all",
            datastore=p["datastore"],
            network=p["network"],
            folder=p["folder"],
            ip=p["ip"],
            gateway=p["gateway"],
            dns=p["dns"],
            port=p["port"],
            wait=p["wait"],
            timeout=p["timeout"],
        )
        problems = request.problems()
        if problems:
            module.fail_json(msg="; ".join(f"{k}: {v}" for k, v in sorted(problems.items())))
        if module.check_mode:
            return {"changed": True, "steps": [f"deploy {p['name']} on {p['host']} from {p['package']}"]}
        done = vcenter.deploy_appliance(session, request, progress)
        for warning in done.warnings:
            module.warn(warning)
        if done.ready is False:
            why = done.radiumd.error if done.radiumd is not None else "no answer"
            module.fail_json(
                msg=f"appliance {done.vm} was deployed, but radiumd did not answer in time ({why}): "
                f"see `radium-admin appliance status {done.vm}`, or remove it with state=absent",
                changed=True,
                appliance=plain(done),
                steps=steps,
            )
        return {"changed": True, "appliance": plain(done), "steps": steps}

    run(module, body)


if __name__ == "__main__":
    main()
