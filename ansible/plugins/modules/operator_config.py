#!/usr/bin/python
# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""radium.estate.operator_config: the operator's key, and the appliances the operator configuration knows."""

from __future__ import annotations

DOCUMENTATION = r"""
module: operator_config
short_description: The Radium operator key, and an appliance recorded in the operator configuration
description:
  - The operator configuration holds the operator's key pair (the key appliances trust for
    enrolling and revoking clients) and the appliances it reaches (name, address, server key).
    C(radium-admin), the console and M(radium.estate.client_key) read it.
  - Without O(appliance), makes sure the operator key exists (made, mode 0600, when there is
    none, as C(radium-admin appliance deploy) does) and returns its public half, which an
    appliance is given as its operator key.
  - With O(appliance) and O(state=present), records that appliance (O(address),
    O(public_key)); with O(state=absent), drops it. For appliances made without vCenter (the
    P(radium.estate.radium_appliance#role) role); M(radium.estate.appliance) records the ones
    it deploys itself.
  - The secret key is never returned.
version_added: "0.1.0"
author: Radium developers (@radium-dev)
options:
  operator_name:
    description: The name of the operator key when one is made (its file name on the appliances).
    type: str
    default: operator
  appliance:
    description: An appliance's name, to record or drop.
    type: str
  address:
    description: Where clients and operators dial the appliance (V(tcp://HOST:PORT)). Required to record one.
    type: str
  public_key:
    description: The appliance's server public key (Z85). Required to record one.
    type: str
  state:
    description: Whether O(appliance) is recorded.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - radium.estate.vcenter.ADMIN
"""

EXAMPLES = r"""
- name: The operator key (made the first time)
  radium.estate.operator_config:
  register: operator
  delegate_to: localhost
  run_once: true

- name: Record an appliance made by hand
  radium.estate.operator_config:
    appliance: gpu7
    address: tcp://gpu7.example.com:7450
    public_key: "{{ gpu7_server_key }}"
  delegate_to: localhost
"""

RETURN = r"""
operator:
  description: The operator key (never its secret half) and where its configuration is.
  returned: always
  type: dict
  sample:
    name: operator
    public_key: "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    config: /root/.config/radium/admin.toml
    created: false
appliances:
  description: The appliances the operator configuration knows, after the change.
  returned: always
  type: list
  elements: dict
  sample: [{name: gpu7, address: "tcp://gpu7.example.com:7450", public_key: "..."}]
"""

from ansible_collections.radium.estate.plugins.module_utils.estate import new_module, plain, run  # noqa: E402

try:
    from radium.remoting import (
        ApplianceEntry,
        check_name,
        forget_appliance,
        is_z85_key,
        operator_identity,
        record_appliance,
        save_client_config,
    )
    from radium.remoting import UsageError as _UsageError
except ImportError:  # new_module says so
    pass


def main() -> None:
    module = new_module(
        {
            "operator_name": {"type": "str", "default": "operator"},
            "appliance": {"type": "str"},
            "address": {"type": "str"},
            "public_key": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        uses_vcenter=False,
        admin=True,
        required_by={"address": ("appliance",), "public_key": ("appliance",)},
        supports_check_mode=True,
    )
    p = module.params

    def body() -> dict:
        name = p["appliance"]
        entry = None
        if name is not None and p["state"] == "present":
            check_name(name, "appliance name")
            if not p["address"] or not p["public_key"]:
                raise _UsageError(f"to record appliance {name}, give its address and public_key")
            if not p["address"].startswith("tcp://") or ":" not in p["address"].removeprefix("tcp://"):
                raise _UsageError(f"address {p['address']!r}: expected tcp://HOST:PORT")
            if not is_z85_key(p["public_key"]):
                raise _UsageError("public_key: expected the appliance's CURVE public key, 40 Z85 characters")
            entry = ApplianceEntry(name=name, address=p["address"], public_key=p["public_key"])

        config, path, new = operator_identity(p["operator_name"])
        changed = new
        if new and not module.check_mode:
            save_client_config(config, path)  # 0600: it holds the secret key
        if entry is not None and entry not in config.appliances:
            changed = True
            if not module.check_mode:
                record_appliance(path, entry)
            config.appliances = [a for a in config.appliances if a.name != name] + [entry]
        elif name is not None and p["state"] == "absent" and any(a.name == name for a in config.appliances):
            changed = True
            if not module.check_mode:
                forget_appliance(name, path)
            config.appliances = [a for a in config.appliances if a.name != name]
        return {
            "changed": changed,
            "operator": {
                "name": config.client.name,
                "public_key": config.client.public_key,
                "config": str(path),
                "created": new,
            },
            "appliances": plain(config.appliances),
        }

    run(module, body)


if __name__ == "__main__":
    main()
