"""Each folder is used by the others through its face (its package's names) and nothing else.

Two checks, after httpx's `test_exported_members.py` and an import-graph check over
the source: every face exports exactly the names meant (a change to a face is a
change to this file), and no module outside a folder imports that folder's
private parts, nor a folder its arrows do not reach (docs/architecture.md).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FACES: dict[str, set[str]] = {
    "radium.remoting": {
        # version
        "VERSION",
        "PROTOCOL_VERSION",
        # errors
        "RadiumError",
        "AllocationError",
        "ApplianceShutdown",
        "AuthError",
        "ConfigError",
        "LeaseNotFound",
        "MessageTooLarge",
        "NotAvailable",
        "NotPermitted",
        "ProtocolError",
        "RemoteError",
        "SessionExpired",
        "TransportError",
        "Unsatisfiable",
        "UsageError",
        # configuration
        "DEFAULT_PORT",
        "ApplianceEntry",
        "ClientConfig",
        "ClientSection",
        "DaemonConfig",
        "Section",
        "check_client_config",
        "client_config_path",
        "convert",
        "dump_toml",
        "explain_validation",
        "lab_profile_dir",
        "load_client_config",
        "load_daemon_config",
        "load_toml",
        "save_client_config",
        # keys
        "NAME_RE",
        "KeyDirectory",
        "KeyPair",
        "check_name",
        "is_z85_key",
        "load_keypair",
        "save_keypair",
        "save_public_key",
        "write_atomic",
        # enrolment
        "ROLES",
        "Enrolment",
        "Revocation",
        "admin_config_path",
        "enroll",
        "enroll_many",
        "find_appliance",
        "forget_appliance",
        "is_enrolled",
        "load_admin_config",
        "new_identity",
        "operator_identity",
        "record_appliance",
        "revoke",
        "revoke_many",
        "guestinfo",
        # the client API and its data model
        "PerAppliance",
        "Reservation",
        "check_health",
        "list_devices",
        "reserve",
        "Survey",
        "survey",
        "list_sessions",
        "end_session",
        "parse_filter",
        "undriven_gpus",
        "validate_request",
        "AllocationRequest",
        "Device",
        "DeviceList",
        "DeviceStatus",
        "Filter",
        "HealthReport",
        "Lease",
        "LeaseHolding",
        "LeasePart",
        "ServerInfo",
        "RunInfo",
        "SessionInfo",
        "SessionList",
        # output, and the faces' helper
        "Result",
        "emit",
        "emit_error",
        "lazy_exports",
    },
    "radium.vcenter": {
        "Session",
        "connect",
        "check_server",
        "server_thumbprint",
        "ConnectionSettings",
        "Profile",
        "ProfileFile",
        "resolve",
        "active_profiles_path",
        "load_profiles",
        "write_profile",
        "RemovedProfile",
        "SavedProfile",
        "check_keyring",
        "save_profile",
        "remove_profile",
        "VCenterError",
        "CertificateError",
        "Fault",
        "LoginFailed",
        "NotFound",
        "NotPermitted",
        "Refused",
        "TaskFailed",
        "Unreachable",
        "Interrupted",
        "SshError",
        "HostKeyRefused",
        "Progress",
        "ProgressEvent",
        "Step",
        "TaskProgress",
        "Transfer",
        "wait",
        "watch",
        "Inventory",
        "collect_inventory",
        "inventory_pages",
        "hosts_inventory",
        "vm_host_ids",
        "estate_touches",
        "Touched",
        "hosts",
        "estate_changes",
        "Host",
        "PassthroughDevice",
        "VirtualMachine",
        "DeviceChange",
        "PassthroughChange",
        "check_assignable",
        "set_passthrough",
        "DEFAULT_TIMEOUT",
        "DeployRequest",
        "DeployedGpu",
        "Deployment",
        "OperatorKey",
        "deploy_appliance",
        "mmio_size_gib",
        "Appliance",
        "ApplianceGpu",
        "ApplianceStatus",
        "Health",
        "Probe",
        "probe_appliance",
        "probe_appliances",
        "Removal",
        "list_appliances",
        "find_appliance",
        "appliance_status",
        "remove_appliance",
        "start_appliance",
        "ApplianceSessions",
        "SessionEnd",
        "appliance_sessions",
        "end_session",
        "command_of",
        "age",
        "register_standin",
        "ClientVM",
        "Registration",
        "SshInstall",
        "Unregistration",
        "PushResult",
        "register_vm",
        "unregister_vm",
        "list_clients",
        "sim",
    },
    "radium.appliance": {
        "validate_package",
        "read_descriptor",
        "write_ovf",
        "write_ova",
        "ovf_environment",
        "parse_properties",
        "PropertyError",
        "ApplianceSettings",
        "GUESTINFO_PREFIX",
        "SECRET_PROPERTIES",
        "BuildRequest",
        "BuildResult",
        "BuildError",
        "build_image",
    },
    "radium.lab": {"Lab", "LabError", "LabStatus", "netns", "vm"},
    "radium.tui": {"Console", "Estate", "Snapshot"},
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_each_face_exports_exactly_the_names_meant(face):
    module = importlib.import_module(face)
    assert set(module.__all__) == FACES[face]
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nonesuch'"):
        module.nonesuch  # noqa: B018


@pytest.mark.parametrize("face", sorted(FACES))
def test_no_exported_name_is_a_submodule_that_would_shadow_it(face):
    """Importing `radium.vcenter.deploy` sets the package's attribute `deploy` to that module."""
    module = importlib.import_module(face)
    submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
    for name in set(module.__all__) & submodules:
        value = getattr(module, name)
        assert value is importlib.import_module(f"{face}.{name}"), f"{face}.{name} is a module and a name"


def test_importing_the_data_planes_face_loads_nothing_it_does_not_use():
    """`radium run` starts through radium.remoting: the face must cost it nothing."""
    code = (
        "import sys, radium.remoting as r\n"
        "heavy = [m for m in ('typing', 'zmq', 'msgspec', 'radium.remoting._config') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "r.ClientConfig\n"
        "assert 'radium.remoting._config' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- the import graph ---------------------------------------------------------------------

#: The folders whose source is checked, and the faces each part may use besides its own folder.
#: `vcenter.cli` (radium-admin) is a face of its own, over the others' faces (its own folder's too).
ARROWS: dict[str, set[str]] = {
    "remoting": set(),
    "appliance": {"remoting"},
    "vcenter": {"remoting", "appliance"},
    "lab": {"remoting", "vcenter", "appliance"},
    "vcenter.cli": {"remoting", "vcenter", "lab", "tui", "appliance"},
    "tui": {"remoting", "vcenter"},
    "ansible": {"remoting", "vcenter"},
    "benchmarks": {"remoting", "vcenter", "lab", "appliance", "tui"},
}
#: Benchmarks measure pieces (the content store, the file protocol): they may import public
#: modules below a face, never a private one or a command line.
MEASURES_PIECES = {"benchmarks"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "benchmarks" else ["radium", *parts])


def _part(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "benchmarks":
        return "benchmarks"
    return "vcenter.cli" if parts[1:3] == ["vcenter", "cli"] else parts[1]


def _imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names imported from it) for every import in the file, however nested."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            if base == "radium":  # from radium import vcenter
                out += [(node.lineno, f"radium.{n}", []) for n in names]
            else:
                out.append((node.lineno, base, names))
    return out


def _violations() -> list[str]:
    found = []
    for folder in sorted({p.split(".")[0] for p in ARROWS}):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_name(path)
            part = _part(module)
            for line, target, names in _imports(path, module):
                tparts = target.split(".")
                if tparts[0] != "radium" or len(tparts) < 2:
                    continue
                if _part(target) == part:
                    continue  # within the part
                where = f"{path.relative_to(ROOT)}:{line}: {target}"
                folder_of_target = tparts[1]
                if folder_of_target not in ARROWS[part] and not (
                    part == "vcenter.cli" and folder_of_target == "vcenter"
                ):
                    found.append(f"{where}: {part} may not use {folder_of_target}")
                    continue
                if part in MEASURES_PIECES:
                    if any(p.startswith("_") or p == "cli" for p in tparts[2:] + names):
                        found.append(f"{where}: a private module or a command line")
                    continue
                if len(tparts) > 2:
                    found.append(f"{where}: below the face radium.{folder_of_target}")
                    continue
                face = importlib.import_module(target)
                hidden = [n for n in names if n not in face.__all__]
                if hidden:
                    found.append(f"{where}: not on the face: {', '.join(hidden)}")
    return found


def test_folders_use_each_other_only_through_their_faces_and_arrows():
    assert _violations() == []


def test_the_import_graph_check_sees_what_it_must_refuse(tmp_path, monkeypatch):
    """The check itself: a private import, a deep import and a backwards arrow are each caught."""
    probe = ROOT / "vcenter" / "_probe_for_test_faces.py"
    probe.write_text(
        "from radium.remoting._config import ClientConfig\n"
        "from radium.remoting.client import api\n"
        "def f():\n"
        "    from radium import lab\n"
        "    from radium.remoting import not_exported\n"
    )
    try:
        found = [v for v in _violations() if "_probe_for_test_faces" in v]
    finally:
        probe.unlink()
    assert len(found) == 4, found
    assert any("below the face radium.remoting" in v and "_config" in v for v in found)
    assert any("radium.remoting.client" in v for v in found)
    assert any("vcenter may not use lab" in v for v in found)
    assert any("not on the face: not_exported" in v for v in found)


def test_every_package_folder_is_installed():
    """A wheel (the appliance image, the Ansible roles) holds only the packages pyproject names."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {d: name for name, d in project["package-dir"].items()}
    found = set()
    for folder, name in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert found == set(project["packages"])
