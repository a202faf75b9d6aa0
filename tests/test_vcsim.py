"""The vCenter simulator (radium.vcenter.sim) behaves like vCenter where Radium relies on it.

Inventory of the shared simulator: cluster DC0_C0 with hosts DC0_C0_H0 (NVIDIA)
and DC0_C0_H1 (AMD), standalone host DC0_H0 (NVIDIA), 4 GPUs per host at
0000:3b/5e/86/af:00.0, the 1st and 3rd passthrough-enabled.  Tests that change
passthrough state use DC0_H0 and put it back; tests that create VMs remove them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from radium.vcenter import sim

pyVmomi = pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")
from pyVim.connect import Disconnect, SmartConnect  # noqa: E402
from pyVmomi import vim  # noqa: E402

MISSING = sim.missing()
needs_vcsim = pytest.mark.skipif(bool(MISSING), reason="vCenter simulator unavailable: " + "; ".join(MISSING))

GPU_IDS = ["0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0", "0000:af:00.0"]
ENABLED = ["0000:3b:00.0", "0000:86:00.0"]
NVIDIA = (0x10DE, 0x1DB4, 0x0302)
AMD = (0x1002, 0x738C, 0x0380)
USER, PASSWORD = "radium", "s3cret"


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vcsim():
    if MISSING:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(MISSING))
    with sim.start(
        clusters=1,
        hosts_per_cluster=2,
        standalone_hosts=1,
        gpus_per_host=4,
        vms=1,
        username=USER,
        password=PASSWORD,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def si(vcsim):
    si = SmartConnect(
        host=vcsim.host,
        port=vcsim.port,
        user=vcsim.username,
        pwd=vcsim.password,
        disableSslCertValidation=True,
    )
    yield si
    Disconnect(si)


@pytest.fixture(scope="module")
def hosts(si) -> dict[str, vim.HostSystem]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        return {h.name: h for h in view.view}
    finally:
        view.Destroy()


@pytest.fixture(scope="module")
def dc(si) -> vim.Datacenter:
    return si.RetrieveContent().rootFolder.childEntity[0]


@pytest.fixture
def cleanup():
    """Collects VMs (and folders) to power off and destroy after the test."""
    made: list = []
    yield made
    for obj in reversed(made):
        try:
            if isinstance(obj, vim.VirtualMachine) and obj.runtime.powerState == "poweredOn":
                wait(obj.PowerOffVM_Task())
            wait(obj.Destroy_Task())
        except vim.fault.VimFault:
            pass


def wait(task, timeout: float = 20.0):
    """Wait for a task; return its result or raise its fault."""
    deadline = time.monotonic() + timeout
    while task.info.state not in ("success", "error"):
        assert time.monotonic() < deadline, f"task {task.info.descriptionId} did not finish"
        time.sleep(0.02)
    if task.info.state == "error":
        raise task.info.error
    return task.info.result


def system_id(host: vim.HostSystem) -> str:
    target = host.parent.environmentBrowser.QueryConfigTarget(host=host)
    return target.pciPassthrough[0].systemId


def passthrough(host: vim.HostSystem, pci_id: str, key: int = -100) -> vim.vm.device.VirtualPCIPassthrough:
    dev = next(d for d in host.hardware.pciDevice if d.id == pci_id)
    backing = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
        id=dev.id,
        deviceId=format(dev.deviceId & 0xFFFF, "x"),
        systemId=system_id(host),
        vendorId=dev.vendorId,
        deviceName=dev.deviceName,
    )
    return vim.vm.device.VirtualPCIPassthrough(key=key, backing=backing)


def dynamic_passthrough(vendor: int, device: int, key: int = -200) -> vim.vm.device.VirtualPCIPassthrough:
    backing = vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo(
        deviceName="",
        allowedDevice=[vim.vm.device.VirtualPCIPassthrough.AllowedDevice(vendorId=vendor, deviceId=device)],
    )
    return vim.vm.device.VirtualPCIPassthrough(key=key, backing=backing)


def create_vm(
    dc, host, name, cleanup, *, devices=(), locked=None, folder=None, extra=None
) -> vim.VirtualMachine:
    spec = vim.vm.ConfigSpec(
        name=name,
        memoryMB=1024,
        numCPUs=2,
        guestId="otherGuest64",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        memoryReservationLockedToMax=locked,
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=d) for d in devices],
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in (extra or {}).items()],
    )
    vm = wait((folder or dc.vmFolder).CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host))
    cleanup.append(vm)
    return vm


def passthru_state(host: vim.HostSystem) -> dict[str, tuple[bool, bool, bool]]:
    return {
        p.id: (p.passthruCapable, p.passthruEnabled, p.passthruActive) for p in host.config.pciPassthruInfo
    }


# ---------------------------------------------------------------------------
# the launcher
# ---------------------------------------------------------------------------


def test_missing_prerequisites_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr(sim, "_go", lambda: None)
    with pytest.raises(sim.VcsimUnavailable, match="golang-go golang-github-vmware-govmomi-dev"):
        sim.build(tmp_path)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RADIUM_VCSIM_CACHE", str(tmp_path / "c"))
    assert sim.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RADIUM_VCSIM_CACHE")
    assert sim.default_cache_dir() == Path.home() / ".cache" / "radium" / "vcsim"


@needs_vcsim
def test_build_is_cached_and_stamped():
    binary = sim.build()  # cold the first time ever (about a minute), then cached
    mtime = binary.stat().st_mtime_ns
    assert sim.build() == binary
    assert binary.stat().st_mtime_ns == mtime, "a second build() must not rebuild"

    # A different stamp (as after an edit of main.go) rebuilds, then is cached again.
    stamp = binary.with_name(binary.name + ".stamp")
    good = stamp.read_text()
    stamp.write_text("0" * 64)
    assert sim.build() == binary
    assert binary.stat().st_mtime_ns != mtime
    assert stamp.read_text() == good


@needs_vcsim
def test_start_and_stop():
    with sim.start(clusters=0, standalone_hosts=1, gpus_per_host=1, vms=0) as s:
        assert s.url == f"https://user:pass@127.0.0.1:{s.port}/sdk"
        assert s.process.poll() is None
        workdir = s.workdir
    assert s.process.poll() is not None
    assert not workdir.exists()


def test_only_configured_credentials_log_in(vcsim):
    assert vcsim.url == f"https://{USER}:{PASSWORD}@127.0.0.1:{vcsim.port}/sdk"
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=USER, pwd="wrong", disableSslCertValidation=True)


def test_advertises_api_7_0_3(si):
    assert si.RetrieveContent().about.apiVersion == "7.0.3.0"


# ---------------------------------------------------------------------------
# GPU hosts
# ---------------------------------------------------------------------------


def test_hosts_carry_gpus_with_passthrough_pattern(hosts):
    assert sorted(hosts) == ["DC0_C0_H0", "DC0_C0_H1", "DC0_H0"]
    for index, name in enumerate(sorted(hosts)):
        host = hosts[name]
        vendor, device, klass = NVIDIA if index % 2 == 0 else AMD
        gpus = [d for d in host.hardware.pciDevice if d.vendorId == vendor]
        assert [d.id for d in gpus] == GPU_IDS
        for d in gpus:
            assert (d.deviceId & 0xFFFF, d.classId) == (device, klass)
            assert d.bus == int(d.id[5:7], 16) and d.slot == 0 and d.function == 0
        state = passthru_state(host)
        for i, pci_id in enumerate(GPU_IDS):
            enabled = i % 2 == 0
            assert state[pci_id] == (True, enabled, enabled), (name, pci_id)
        # Chipset devices are listed, not capable.
        assert all(not s[0] for pci_id, s in state.items() if pci_id not in GPU_IDS)
        assert len(state) == len(host.hardware.pciDevice)


def test_pci_passthru_system(hosts, dc):
    host = hosts["DC0_H0"]
    pts = host.configManager.pciPassthruSystem
    assert isinstance(pts, vim.host.PciPassthruSystem)
    assert {p.id: p.passthruEnabled for p in pts.pciPassthruInfo} == {
        p.id: p.passthruEnabled for p in host.config.pciPassthruInfo
    }
    other = hosts["DC0_C0_H0"].configManager.pciPassthruSystem
    assert other != pts
    before = passthru_state(host)
    try:
        # Enabling takes effect in the configuration; activation waits for a reboot.
        pts.UpdatePassthruConfig([vim.host.PciPassthruConfig(id="0000:5e:00.0", passthruEnabled=True)])
        assert passthru_state(host)["0000:5e:00.0"] == (True, True, False)
        pts.Refresh()
        assert {p.id: p.passthruEnabled for p in pts.pciPassthruInfo}["0000:5e:00.0"] is True
        assert passthru_state(hosts["DC0_C0_H0"])["0000:5e:00.0"] == (True, False, False)  # per host

        with pytest.raises(vim.fault.InvalidState):
            wait(host.RebootHost_Task(force=False))  # not in maintenance mode
        wait(host.EnterMaintenanceMode_Task(timeout=0))
        wait(host.RebootHost_Task(force=False))
        wait(host.ExitMaintenanceMode_Task(timeout=0))
        assert passthru_state(host)["0000:5e:00.0"] == (True, True, True)

        # applyNow (vSphere 7) applies at once.
        pts.UpdatePassthruConfig(
            [vim.host.PciPassthruConfig(id="0000:5e:00.0", passthruEnabled=False, applyNow=True)]
        )
        assert passthru_state(host)["0000:5e:00.0"] == (True, False, False)

        # All or nothing: an unknown id or a device that is not capable changes nothing.
        for bad in ("0000:00:00.0", "0000:ff:1f.7"):
            with pytest.raises(vim.fault.HostConfigFault):
                pts.UpdatePassthruConfig(
                    [
                        vim.host.PciPassthruConfig(id="0000:af:00.0", passthruEnabled=True),
                        vim.host.PciPassthruConfig(id=bad, passthruEnabled=True),
                    ]
                )
        assert passthru_state(host) == before
    finally:
        pts.UpdatePassthruConfig(
            [vim.host.PciPassthruConfig(id=i, passthruEnabled=before[i][1], applyNow=True) for i in GPU_IDS]
        )
    assert passthru_state(host) == before


def test_query_config_target_lists_passthrough_devices(hosts, dc, cleanup):
    amd = hosts["DC0_C0_H1"]
    browser = amd.parent.environmentBrowser
    target = browser.QueryConfigTarget(host=amd)
    assert [p.pciDevice.id for p in target.pciPassthrough] == ENABLED
    assert all(
        (p.pciDevice.vendorId, p.pciDevice.deviceId & 0xFFFF) == AMD[:2] for p in target.pciPassthrough
    )
    assert len({p.systemId for p in target.pciPassthrough}) == 1 and target.pciPassthrough[0].systemId
    assert [(d.vendorId, d.deviceId) for d in target.dynamicPassthrough] == [AMD[:2]]
    assert target.datastore, "the simulator's own targets are still there"

    # The whole cluster: both hosts' enabled devices, each host with its own systemId.
    target = browser.QueryConfigTarget()
    assert len(target.pciPassthrough) == 2 * len(ENABLED)
    assert len({p.systemId for p in target.pciPassthrough}) == 2
    assert sorted((d.vendorId, d.deviceId) for d in target.dynamicPassthrough) == sorted(
        [AMD[:2], NVIDIA[:2]]
    )

    # A VM's environment browser answers too.
    vm = create_vm(dc, amd, "cfgtarget-vm", cleanup)
    assert [
        p.pciDevice.id for p in vm.environmentBrowser.QueryConfigTarget(host=amd).pciPassthrough
    ] == ENABLED

    # The host's passthrough state drives the list.
    standalone = hosts["DC0_H0"]
    pts = standalone.configManager.pciPassthruSystem
    pts.UpdatePassthruConfig(
        [vim.host.PciPassthruConfig(id="0000:86:00.0", passthruEnabled=False, applyNow=True)]
    )
    try:
        listed = standalone.parent.environmentBrowser.QueryConfigTarget(host=standalone).pciPassthrough
        assert [p.pciDevice.id for p in listed] == ["0000:3b:00.0"]
    finally:
        pts.UpdatePassthruConfig(
            [vim.host.PciPassthruConfig(id="0000:86:00.0", passthruEnabled=True, applyNow=True)]
        )


# ---------------------------------------------------------------------------
# VMs
# ---------------------------------------------------------------------------


def test_vm_names_unique_per_folder(hosts, dc, cleanup):
    host = hosts["DC0_C0_H0"]
    vm = create_vm(dc, host, "unique-vm", cleanup)
    other = create_vm(dc, host, "unique-other", cleanup)

    with pytest.raises(vim.fault.DuplicateName) as err:
        create_vm(dc, host, "unique-vm", cleanup)
    assert err.value.name == "unique-vm" and err.value.object == vm

    with pytest.raises(vim.fault.DuplicateName):
        wait(
            other.CloneVM_Task(
                folder=dc.vmFolder, name="unique-vm", spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec())
            )
        )

    with pytest.raises(vim.fault.DuplicateName):
        wait(other.Rename_Task(newName="unique-vm"))

    import_spec = vim.vm.VmImportSpec(
        configSpec=vim.vm.ConfigSpec(
            name="unique-vm",
            memoryMB=512,
            numCPUs=1,
            guestId="otherGuest64",
            files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        )
    )
    with pytest.raises(vim.fault.DuplicateName):
        host.parent.resourcePool.ImportVApp(spec=import_spec, folder=dc.vmFolder, host=host)
    import_spec.configSpec.name = "unique-import"
    lease = host.parent.resourcePool.ImportVApp(spec=import_spec, folder=dc.vmFolder, host=host)
    imported = lease.info.entity
    cleanup.append(imported)
    lease.HttpNfcLeaseComplete()
    assert imported.name == "unique-import"

    # Another folder may hold the same name; moving it next to its namesake fails.
    folder = dc.vmFolder.CreateFolder("unique-folder")
    twin = create_vm(dc, host, "unique-vm", cleanup, folder=folder)
    cleanup.insert(0, folder)  # destroyed last
    with pytest.raises(vim.fault.DuplicateName):
        wait(dc.vmFolder.MoveIntoFolder_Task([twin]))

    # Free names still work.
    clone = wait(
        other.CloneVM_Task(
            folder=dc.vmFolder, name="unique-clone", spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec())
        )
    )
    cleanup.append(clone)
    wait(other.Rename_Task(newName="unique-renamed"))
    assert other.name == "unique-renamed"


def test_passthrough_vm_needs_full_memory_reservation(hosts, dc, cleanup):
    host = hosts["DC0_C0_H0"]
    vm = create_vm(dc, host, "reserve-vm", cleanup, devices=[passthrough(host, "0000:3b:00.0")])

    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        wait(vm.PowerOnVM_Task())
    assert "memory reservation" in err.value.msg and "reserve-vm" in err.value.msg
    assert vm.runtime.powerState == "poweredOff"

    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryReservationLockedToMax=True)))
    wait(vm.PowerOnVM_Task())
    assert vm.runtime.powerState == "poweredOn"

    # Without passthrough devices no reservation is needed.
    plain = create_vm(dc, host, "reserve-plain", cleanup)
    wait(plain.PowerOnVM_Task())


def test_passthrough_device_must_be_enabled_on_the_vm_host(hosts, dc, cleanup):
    host = hosts["DC0_C0_H0"]
    vm = create_vm(
        dc, host, "disabled-dev-vm", cleanup, devices=[passthrough(host, "0000:5e:00.0")], locked=True
    )
    with pytest.raises(vim.fault.GenericVmConfigFault, match="not enabled for passthrough"):
        wait(vm.PowerOnVM_Task())
    # A device picked on another host (its systemId) does not fit this host.
    wrong = create_vm(
        dc,
        host,
        "wrong-host-vm",
        cleanup,
        devices=[passthrough(hosts["DC0_H0"], "0000:3b:00.0")],
        locked=True,
    )
    with pytest.raises(vim.fault.GenericVmConfigFault, match="systemId"):
        wait(wrong.PowerOnVM_Task())


def test_passthrough_device_goes_to_one_powered_on_vm(hosts, dc, cleanup):
    host = hosts["DC0_C0_H1"]
    first = create_vm(
        dc, host, "gpu-first", cleanup, devices=[passthrough(host, "0000:86:00.0")], locked=True
    )
    second = create_vm(
        dc, host, "gpu-second", cleanup, devices=[passthrough(host, "0000:86:00.0")], locked=True
    )
    wait(first.PowerOnVM_Task())

    with pytest.raises(vim.fault.ResourceInUse) as err:
        wait(second.PowerOnVM_Task())
    assert "0000:86:00.0" in err.value.msg and "gpu-first" in err.value.msg
    assert second.runtime.powerState == "poweredOff"

    # The same PCI id on another host is another device.
    elsewhere = hosts["DC0_C0_H0"]
    third = create_vm(
        dc, elsewhere, "gpu-elsewhere", cleanup, devices=[passthrough(elsewhere, "0000:86:00.0")], locked=True
    )
    wait(third.PowerOnVM_Task())

    # Freed by powering off.
    wait(first.PowerOffVM_Task())
    wait(second.PowerOnVM_Task())
    assert second.runtime.powerState == "poweredOn"
    with pytest.raises(vim.fault.ResourceInUse):
        wait(first.PowerOnVM_Task())

    # Two VMs with one device in one PowerOnMultiVM request: refused.
    wait(second.PowerOffVM_Task())
    with pytest.raises(vim.fault.ResourceInUse):
        wait(dc.PowerOnMultiVM_Task([first, second]))


def test_dynamic_directpath_gets_a_free_device(hosts, dc, cleanup):
    host = hosts["DC0_H0"]  # NVIDIA, enabled: 3b and 86
    vms = [
        create_vm(dc, host, f"dyn-{i}", cleanup, devices=[dynamic_passthrough(*NVIDIA[:2])], locked=True)
        for i in range(3)
    ]
    wait(vms[0].PowerOnVM_Task())
    wait(vms[1].PowerOnVM_Task())
    assigned = {
        d.backing.assignedId
        for vm in vms[:2]
        for d in vm.config.hardware.device
        if isinstance(d, vim.vm.device.VirtualPCIPassthrough)
    }
    assert assigned == set(ENABLED)
    with pytest.raises(vim.fault.InsufficientResourcesFault):
        wait(vms[2].PowerOnVM_Task())
    # An AMD-only request finds nothing on an NVIDIA host.
    amd = create_vm(dc, host, "dyn-amd", cleanup, devices=[dynamic_passthrough(*AMD[:2])], locked=True)
    wait(vms[0].PowerOffVM_Task())
    with pytest.raises(vim.fault.InsufficientResourcesFault):
        wait(amd.PowerOnVM_Task())
    wait(vms[2].PowerOnVM_Task())


def test_extra_config_and_custom_values_replace(si, hosts, dc, cleanup):
    host = hosts["DC0_C0_H0"]
    vm = create_vm(
        dc, host, "extra-vm", cleanup, extra={"guestinfo.radium.a": "1", "guestinfo.radium.b": "x"}
    )

    def extra(v):
        return [(o.key, o.value) for o in v.config.extraConfig if o.key.startswith("guestinfo.radium.")]

    opt = vim.option.OptionValue
    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[opt(key="guestinfo.radium.a", value="2")])))
    assert extra(vm) == [("guestinfo.radium.a", "2"), ("guestinfo.radium.b", "x")]
    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[opt(key="guestinfo.radium.b", value="")])))
    assert extra(vm) == [("guestinfo.radium.a", "2")]

    clone = wait(
        vm.CloneVM_Task(
            folder=dc.vmFolder,
            name="extra-clone",
            spec=vim.vm.CloneSpec(
                location=vim.vm.RelocateSpec(),
                config=vim.vm.ConfigSpec(extraConfig=[opt(key="guestinfo.radium.c", value="3")]),
            ),
        )
    )
    cleanup.append(clone)
    assert extra(clone) == [("guestinfo.radium.a", "2"), ("guestinfo.radium.c", "3")]

    fields = si.RetrieveContent().customFieldsManager
    field = next((f for f in fields.field if f.name == "radium.test"), None) or fields.AddCustomFieldDef(
        name="radium.test", moType=vim.VirtualMachine
    )
    vm.setCustomValue("radium.test", "one")
    fields.SetField(entity=vm, key=field.key, value="two")
    assert [(v.key, v.value) for v in vm.customValue if v.key == field.key] == [(field.key, "two")]


def test_the_password_is_not_on_the_simulators_command_line(vcsim, si):
    """`ps` shows every process's command line to every local user: the password goes in the
    environment (readable only by the simulator's own user), and logging in still needs it."""
    assert si.content.sessionManager.currentSession is not None
    cmdline = Path(f"/proc/{vcsim.process.pid}/cmdline").read_bytes()
    assert PASSWORD.encode() not in cmdline and f"-username={USER}".encode() in cmdline
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(
            host=vcsim.host, port=vcsim.port, user=USER, pwd=PASSWORD + "x", disableSslCertValidation=True
        )
