# Copyright: Radium developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What every module of the collection shares: the vCenter options, a session, errors as Ansible says them.

The modules are thin: each parses its options, calls one operation of the `radium`
package (the one `radium-admin` and the console call, with the same checks and the
same error texts) and returns what it did.  A `RadiumError` becomes a failed task
with its message (and its code), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import msgspec

    from radium import vcenter
    from radium.remoting import RadiumError
except ImportError:
    HAS_RADIUM = False
    RADIUM_IMPORT_ERROR: str | None = traceback.format_exc()
    vcenter = None  # new_module fails at once, saying what is missing

    class RadiumError(Exception):  # type: ignore[no-redef]  # (never raised: nothing runs without radium)
        pass
else:
    HAS_RADIUM = True
    RADIUM_IMPORT_ERROR = None

VCENTER_ARGS: dict[str, dict[str, Any]] = {
    "vcenter_url": {"type": "str"},
    "vcenter_user": {"type": "str"},
    "vcenter_password": {"type": "str", "no_log": True},
    "vcenter_ca": {"type": "path"},
    "vcenter_thumbprint": {"type": "str"},
    "vcenter_insecure": {"type": "bool", "default": False},
    "vcenter_profile": {"type": "str"},
}
ADMIN_ARGS: dict[str, dict[str, Any]] = {"admin_config": {"type": "path"}}


def new_module(
    argument_spec: dict[str, Any], *, uses_vcenter: bool = True, admin: bool = False, **kwargs: Any
) -> AnsibleModule:
    """An `AnsibleModule` with the shared options; fails at once, clearly, without the radium package."""
    spec = dict(argument_spec)
    if uses_vcenter:
        spec.update(VCENTER_ARGS)
    if admin:
        spec.update(ADMIN_ARGS)
    module = AnsibleModule(argument_spec=spec, **kwargs)
    if not HAS_RADIUM:
        module.fail_json(
            msg=missing_required_lib(
                "radium", reason="in the Python that runs this module (ansible_python_interpreter)"
            ),
            exception=RADIUM_IMPORT_ERROR,
        )
    if admin and module.params.get("admin_config"):
        os.environ["RADIUM_ADMIN_CONFIG"] = module.params["admin_config"]  # as radium-admin reads it
    return module


@contextlib.contextmanager
def vcenter_session(module: AnsibleModule) -> Iterator[Any]:
    """A vCenter session from the options, the environment and the profiles, as `radium-admin` resolves
    them (no prompt: a module has no terminal); logged out at the end."""
    p = module.params
    settings = vcenter.resolve(
        url=p["vcenter_url"],
        user=p["vcenter_user"],
        password=p["vcenter_password"],
        thumbprint=p["vcenter_thumbprint"],
        ca=p["vcenter_ca"],
        insecure=p["vcenter_insecure"] or None,
        profile=p["vcenter_profile"],
    )
    with vcenter.connect(settings) as session:
        yield session


def run(module: AnsibleModule, body: Callable[[], dict[str, Any]]) -> None:
    """Run the module's body; exit with its result, or fail with a `RadiumError`'s own message."""
    try:
        result = body()
    except RadiumError as exc:
        module.fail_json(msg=exc.message, code=exc.code)
    module.exit_json(**result)


def plain(value: Any) -> Any:
    """A library result as Ansible returns it: dicts, lists, strings and numbers."""
    return msgspec.to_builtins(value)
