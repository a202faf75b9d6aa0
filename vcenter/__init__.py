"""Radium's management plane over vCenter (pyVmomi): this module's names are its whole public face.

    from radium import vcenter

    settings = vcenter.resolve(profile="lab")          # flags > environment > profile
    with vcenter.connect(settings) as vc:               # one session, logged out at exit
        for host in vcenter.hosts(vc):                  # one property collection
            print(host.name, [d.model for d in host.accelerators])
        vcenter.set_passthrough(vc, "esx1", ["0000:3b:00.0"], enable=True)
        request = vcenter.DeployRequest(name="gpu1", host="esx1", package=ova)
        done = vcenter.deploy_appliance(vc, request, progress=print)   # steps, task reports, upload bytes

Every operator action is one function here, with its checks, its steps, its
progress events (`Step`, `TaskProgress`, `Transfer`, sent to the caller's
`progress`) and its error texts (`VCenterError` and its tree, all
`RadiumError`s); `radium-admin`, the console and the Ansible modules only
parse, call and render:

    hosts / collect_inventory      list hosts and their accelerators
    inventory_pages                the same a page of hosts at a time (a first screen at once)
    estate_changes / estate_touches   the estate as it changes (what a live view waits on)
    hosts_inventory                some hosts again, with the VMs on them (after a change)
    set_passthrough                passthrough enable | disable
    deploy_appliance               appliance deploy
    list_appliances / appliance_status / remove_appliance   appliance list | status | remove
    appliance_sessions / end_session                        appliance sessions | end-session
    register_vm / unregister_vm / list_clients              register-vm | unregister-vm | clients
    save_profile / load_profiles / remove_profile        profile save | list | remove

(enrol and revoke are `radium.remoting.enroll` / `revoke`; the lab is `radium.lab.Lab`.)
Names are loaded on first use, pyVmomi only when a session is opened.
"""

from radium.remoting import lazy_exports

TYPE_CHECKING = False

EXPORTS: dict[str, str] = {
    # connection and settings
    **dict.fromkeys(("Session", "connect", "check_server", "server_thumbprint"), ".connection"),
    **dict.fromkeys(("ConnectionSettings", "Profile", "ProfileFile", "resolve"), ".settings"),
    **dict.fromkeys(("active_profiles_path", "load_profiles", "write_profile"), ".settings"),
    **dict.fromkeys(("RemovedProfile", "SavedProfile", "check_keyring", "remove_profile"), ".profiles"),
    "save_profile": ".profiles",
    # errors
    **dict.fromkeys(
        (
            "CertificateError",
            "Fault",
            "LoginFailed",
            "NotFound",
            "NotPermitted",
            "Refused",
            "TaskFailed",
            "Unreachable",
            "VCenterError",
        ),
        ".errors",
    ),
    "Interrupted": ".deploy",
    "SshError": ".ssh",
    "HostKeyRefused": ".ssh",
    # progress
    **dict.fromkeys(("Progress", "ProgressEvent", "Step", "TaskProgress", "Transfer"), ".progress"),
    "wait": ".tasks",
    "watch": ".tasks",
    # inventory and passthrough
    "Inventory": ".inventory",
    "collect_inventory": ".inventory:collect",
    "inventory_pages": ".inventory:pages",
    "hosts": ".inventory",
    "estate_changes": ".collect",
    "estate_touches": ".collect",
    "Touched": ".collect",
    "hosts_inventory": ".inventory:of_hosts",
    "vm_host_ids": ".collect",
    **dict.fromkeys(("Host", "PassthroughDevice", "VirtualMachine"), ".model"),
    **dict.fromkeys(("DeviceChange", "PassthroughChange"), ".passthrough"),
    **dict.fromkeys(("check_assignable", "set_passthrough"), ".passthrough"),
    # appliances
    **dict.fromkeys(("DEFAULT_TIMEOUT", "DeployRequest", "DeployedGpu"), ".plan"),
    **dict.fromkeys(("Deployment", "OperatorKey"), ".deploy"),
    "deploy_appliance": ".deploy:deploy",
    "mmio_size_gib": ".hardware",
    **dict.fromkeys(
        ("Appliance", "ApplianceGpu", "ApplianceStatus", "Health", "Probe", "Removal"), ".appliances"
    ),
    "probe_appliance": ".appliances:probe",
    "probe_appliances": ".appliances:probe_many",
    "list_appliances": ".appliances:appliances",
    "find_appliance": ".appliances:find",
    "appliance_status": ".appliances:status",
    "remove_appliance": ".appliances:remove",
    "start_appliance": ".appliances:start",
    "register_standin": ".standin",
    **dict.fromkeys(("ApplianceSessions", "SessionEnd", "end_session", "command_of", "age"), ".sessions"),
    "appliance_sessions": ".sessions:sessions",
    # client VMs
    **dict.fromkeys(("ClientVM", "Registration", "SshInstall", "Unregistration"), ".registration"),
    "PushResult": ".ssh",
    "register_vm": ".registration",
    "unregister_vm": ".registration:unregister",
    "list_clients": ".registration:registered",
    # the simulator (tests and the lab)
    "sim": ".sim:",
}

__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:
    from . import sim
    from .appliances import Appliance, ApplianceGpu, ApplianceStatus, Health, Probe, Removal
    from .appliances import appliances as list_appliances
    from .appliances import find as find_appliance
    from .appliances import probe as probe_appliance
    from .appliances import probe_many as probe_appliances
    from .appliances import remove as remove_appliance
    from .appliances import start as start_appliance
    from .appliances import status as appliance_status
    from .collect import Touched, estate_changes, estate_touches, vm_host_ids
    from .connection import Session, check_server, connect, server_thumbprint
    from .deploy import Deployment, Interrupted, OperatorKey
    from .deploy import deploy as deploy_appliance
    from .errors import (
        CertificateError,
        Fault,
        LoginFailed,
        NotFound,
        NotPermitted,
        Refused,
        TaskFailed,
        Unreachable,
        VCenterError,
    )
    from .hardware import mmio_size_gib
    from .inventory import Inventory, hosts
    from .inventory import collect as collect_inventory
    from .inventory import of_hosts as hosts_inventory
    from .inventory import pages as inventory_pages
    from .model import Host, PassthroughDevice, VirtualMachine
    from .passthrough import DeviceChange, PassthroughChange, check_assignable, set_passthrough
    from .plan import DEFAULT_TIMEOUT, DeployedGpu, DeployRequest
    from .profiles import RemovedProfile, SavedProfile, check_keyring, remove_profile, save_profile
    from .progress import Progress, ProgressEvent, Step, TaskProgress, Transfer
    from .registration import ClientVM, Registration, SshInstall, Unregistration, register_vm
    from .registration import registered as list_clients
    from .registration import unregister as unregister_vm
    from .sessions import ApplianceSessions, SessionEnd, age, command_of, end_session
    from .sessions import sessions as appliance_sessions
    from .settings import (
        ConnectionSettings,
        Profile,
        ProfileFile,
        active_profiles_path,
        load_profiles,
        resolve,
        write_profile,
    )
    from .ssh import HostKeyRefused, PushResult, SshError
    from .standin import register_standin
    from .tasks import wait, watch
