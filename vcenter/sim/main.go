// Command radium-vcsim is a vCenter simulator for Radium's tests and lab: the
// vCenter simulator of govmomi (0.24.2 as Debian ships it), whose ESXi hosts
// carry GPU PCI devices, plus the vCenter behaviour that Radium's management
// plane relies on and that the stock simulator lacks.
//
// It is built in GOPATH mode against Debian's golang-github-vmware-govmomi-dev
// (see radium.vcenter.sim.build); nothing here patches govmomi.
//
// Inventory (flags): one datacenter DC0 with -clusters clusters of
// -hosts-per-cluster hosts, -standalone-hosts standalone hosts, -vms virtual
// machines per cluster / standalone host (created powered on, without GPUs).
//
// GPUs: every host gets -gpus-per-host GPUs.  Hosts are sorted by name; the
// host at an even index carries NVIDIA Tesla V100 PCIe 16GB cards (vendor
// 0x10de, device 0x1db4, class 0x0302), the host at an odd index AMD Instinct
// MI100 cards (0x1002 / 0x738c, class 0x0380).  GPU i sits at PCI id
// "0000:BB:00.0" with BB the i-th entry of gpuBuses (3b, 5e, 86, af, d8, ...).
// Passthrough pattern: every GPU is passthrough-capable; GPU i with i even is
// passthrough-enabled and active, GPU i with i odd is capable but neither
// enabled nor active.  The host's other (chipset) PCI devices are listed in
// config.pciPassthruInfo as not capable, as ESXi does.
//
// TLS: the server's certificate is an ECDSA certificate for 127.0.0.1 signed by
// a CA made at start-up (as vCenter's VMCA signs its machine certificate);
// -ca-file writes that CA's PEM, for clients that verify with a CA bundle.
//
// vCenter behaviour added on top of the simulator:
//
//   - host.configManager.pciPassthruSystem is a HostPciPassthruSystem per host.
//     UpdatePassthruConfig sets passthruEnabled (all-or-nothing: an unknown id or
//     enabling a device that is not capable fails with HostConfigFault and
//     changes nothing).  passthruActive follows passthruEnabled only after a
//     host reboot (RebootHost_Task, which needs maintenance mode or force), or at
//     once when the config item has applyNow=true (vSphere 7 semantics).
//     Refresh re-reads the host's state.
//   - EnvironmentBrowser.QueryConfigTarget lists, for the host asked for (or
//     every host of the compute resource), each passthrough-enabled device in
//     pciPassthrough (VirtualMachinePciPassthroughInfo: name = PCI id,
//     pciDevice, systemId = the host's stable system id) and each distinct
//     enabled vendor/device model in dynamicPassthrough.
//   - VM names are unique per folder: CreateVM_Task, CloneVM_Task,
//     RegisterVM_Task, Rename_Task and MoveIntoFolder_Task fail (task error)
//     and ImportVApp fails (SOAP fault) with DuplicateName.
//   - PowerOnVM_Task / PowerOnMultiVM_Task of a VM with VirtualPCIPassthrough
//     devices fail with GenericVmConfigFault unless the VM's memory is fully
//     reserved (config.memoryReservationLockedToMax, or a reservation of its
//     whole memory size), unless each device (by PCI id) exists on the VM's host
//     and is passthrough-enabled there, and unless a non-empty systemId matches
//     that host; they fail with ResourceInUse when a device (host + PCI id) is
//     held by another powered-on VM.  A dynamic DirectPath device
//     (VirtualPCIPassthroughDynamicBackingInfo) is given a free enabled device
//     of an allowed vendor/device at power-on (backing.assignedId).
//   - ReconfigVM_Task: an extraConfig key set again replaces its value and an
//     empty value removes the key.  SetField / setCustomValue replace the
//     entity's value for that field.  CloneVM_Task keeps the source's
//     extraConfig (the clone spec's extraConfig applied on top).
//
// The rules that must run before the simulator acts are enforced by a SOAP
// front handler (it decodes the request with simulator.UnmarshalBody, checks,
// and either answers with a failed task / fault or passes the request on): the
// simulator's own objects cannot be wrapped because its code type-asserts
// *simulator.VirtualMachine, *simulator.Folder and *simulator.HostSystem.
// The passthrough system and the EnvironmentBrowser override are managed
// objects registered with simulator.Map.
//
// Not covered: a device that is enabled but not yet active (pending reboot) is
// already usable, as the configuration target lists enabled devices; powering
// on by other paths (vApp power-on, snapshot revert) skips the passthrough
// rules; adding or removing a passthrough device while the VM is powered on is
// not refused; hosts added at run time get no GPUs; OVF ProductSection
// properties still land in extraConfig, not in vAppConfig.property.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

const (
	apiVersion = "7.0.3.0"
	maxGPUs    = 16
)

type gpuModel struct {
	vendorID, deviceID, subVendorID, subDeviceID, classID int16
	vendorName, deviceName                                string
}

var (
	teslaV100 = gpuModel{0x10de, 0x1db4, 0x10de, 0x1214, 0x0302,
		"NVIDIA Corporation", "GV100GL [Tesla V100 PCIe 16GB]"}
	instinctMI100 = gpuModel{0x1002, 0x738c, 0x1002, 0x0c34, 0x0380,
		"Advanced Micro Devices, Inc. [AMD/ATI]", "Arcturus GL-XL [Instinct MI100]"}

	// PCI buses of the GPU slots, in slot order (root ports of a 2-socket server).
	gpuBuses = []byte{0x3b, 0x5e, 0x86, 0xaf, 0xd8, 0x18, 0x1a, 0x1c, 0x3d, 0x60, 0x88, 0xb1, 0xda, 0x40, 0x62, 0x8a}
)

// ---------------------------------------------------------------------------
// Per-host PCI passthrough system
// ---------------------------------------------------------------------------

// PciPassthruSystem is the HostPciPassthruSystem of one host.  Its
// pciPassthruInfo and the host's config.pciPassthruInfo are always replaced
// together (copy on write), so both read the same state.
type PciPassthruSystem struct {
	mo.HostPciPassthruSystem

	host     *simulator.HostSystem
	systemID string
}

// passthru maps a host to its PciPassthruSystem; filled before serving, read-only after.
var passthru = map[types.ManagedObjectReference]*PciPassthruSystem{}

func clonePassthruInfo(in []types.BaseHostPciPassthruInfo) []types.BaseHostPciPassthruInfo {
	out := make([]types.BaseHostPciPassthruInfo, 0, len(in))
	for _, b := range in {
		if p, ok := b.(*types.HostPciPassthruInfo); ok {
			c := *p
			out = append(out, &c)
		} else {
			out = append(out, b)
		}
	}
	return out
}

// setPassthruInfo publishes a new passthrough state (caller holds the host's lock).
func (p *PciPassthruSystem) setPassthruInfo(infos []types.BaseHostPciPassthruInfo) {
	simulator.Map.Update(p.host, []types.PropertyChange{{Name: "config.pciPassthruInfo", Val: infos}})
	simulator.Map.Update(p, []types.PropertyChange{{Name: "pciPassthruInfo", Val: infos}})
}

func (p *PciPassthruSystem) UpdatePassthruConfig(ctx *simulator.Context, req *types.UpdatePassthruConfig) soap.HasFault {
	body := new(methods.UpdatePassthruConfigBody)
	var msg string
	simulator.Map.WithLock(p.host, func() {
		infos := clonePassthruInfo(p.host.Config.PciPassthruInfo)
		byID := map[string]*types.HostPciPassthruInfo{}
		for _, b := range infos {
			if i, ok := b.(*types.HostPciPassthruInfo); ok {
				byID[i.Id] = i
			}
		}
		for _, c := range req.Config {
			cfg := c.GetHostPciPassthruConfig()
			info := byID[cfg.Id]
			switch {
			case info == nil:
				msg = fmt.Sprintf("PCI device %q not found on host %s", cfg.Id, p.host.Name)
			case cfg.PassthruEnabled && !info.PassthruCapable:
				msg = fmt.Sprintf("PCI device %s on host %s is not passthrough capable", cfg.Id, p.host.Name)
			}
			if msg != "" {
				return
			}
			info.PassthruEnabled = cfg.PassthruEnabled
			if cfg.ApplyNow != nil && *cfg.ApplyNow {
				info.PassthruActive = info.PassthruEnabled
			}
		}
		p.setPassthruInfo(infos)
	})
	if msg != "" {
		body.Fault_ = simulator.Fault(msg, withMessage(&types.HostConfigFault{}, msg))
		return body
	}
	body.Res = new(types.UpdatePassthruConfigResponse)
	return body
}

func (p *PciPassthruSystem) Refresh(req *types.Refresh) soap.HasFault {
	simulator.Map.WithLock(p.host, func() {
		simulator.Map.Update(p, []types.PropertyChange{{Name: "pciPassthruInfo", Val: p.host.Config.PciPassthruInfo}})
	})
	return &methods.RefreshBody{Res: new(types.RefreshResponse)}
}

// reboot makes pending passthrough changes active (caller holds the host's lock).
func (p *PciPassthruSystem) reboot() {
	infos := clonePassthruInfo(p.host.Config.PciPassthruInfo)
	for _, b := range infos {
		if i, ok := b.(*types.HostPciPassthruInfo); ok {
			i.PassthruActive = i.PassthruEnabled
		}
	}
	p.setPassthruInfo(infos)
	now := time.Now()
	simulator.Map.Update(p.host, []types.PropertyChange{{Name: "runtime.bootTime", Val: now}})
}

// hostDevice is one PCI device of a host with its passthrough state.
type hostDevice struct {
	dev     types.HostPciDevice
	enabled bool
	active  bool
}

// devices snapshots the host's PCI devices that are passthrough capable.
func (p *PciPassthruSystem) devices() []hostDevice {
	var out []hostDevice
	simulator.Map.WithLock(p.host, func() {
		state := map[string]*types.HostPciPassthruInfo{}
		for _, b := range p.host.Config.PciPassthruInfo {
			if i, ok := b.(*types.HostPciPassthruInfo); ok {
				state[i.Id] = i
			}
		}
		for _, d := range p.host.Hardware.PciDevice {
			if s := state[d.Id]; s != nil && s.PassthruCapable {
				out = append(out, hostDevice{d, s.PassthruEnabled, s.PassthruActive})
			}
		}
	})
	return out
}

// ---------------------------------------------------------------------------
// Inventory
// ---------------------------------------------------------------------------

func sortedHosts() []*simulator.HostSystem {
	var hosts []*simulator.HostSystem
	for _, e := range simulator.Map.All("HostSystem") {
		if h, ok := e.(*simulator.HostSystem); ok {
			hosts = append(hosts, h)
		}
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts
}

func addGPUs(gpusPerHost int) {
	for h, host := range sortedHosts() {
		model := teslaV100
		if h%2 == 1 {
			model = instinctMI100
		}
		// Hardware.PciDevice is shared between hosts: build a new slice.
		devices := make([]types.HostPciDevice, 0, len(host.Hardware.PciDevice)+gpusPerHost)
		devices = append(devices, host.Hardware.PciDevice...)
		infos := make([]types.BaseHostPciPassthruInfo, 0, cap(devices))
		for _, d := range devices {
			infos = append(infos, &types.HostPciPassthruInfo{Id: d.Id, DependentDevice: d.Id})
		}
		for i := 0; i < gpusPerHost; i++ {
			bus := gpuBuses[i]
			id := fmt.Sprintf("0000:%02x:00.0", bus)
			devices = append(devices, types.HostPciDevice{
				Id:           id,
				ClassId:      model.classID,
				Bus:          bus,
				VendorId:     model.vendorID,
				SubVendorId:  model.subVendorID,
				VendorName:   model.vendorName,
				DeviceId:     model.deviceID,
				SubDeviceId:  model.subDeviceID,
				ParentBridge: fmt.Sprintf("0000:%02x:00.0", bus-1),
				DeviceName:   model.deviceName,
			})
			enabled := i%2 == 0
			infos = append(infos, &types.HostPciPassthruInfo{
				Id: id, DependentDevice: id,
				PassthruCapable: true, PassthruEnabled: enabled, PassthruActive: enabled,
			})
		}
		host.Hardware.PciDevice = devices
		host.Config.PciPassthruInfo = infos

		p := &PciPassthruSystem{
			host:     host,
			systemID: uuid.NewSHA1(uuid.NameSpaceOID, []byte("radium-vcsim/"+host.Name)).String(),
		}
		p.Self.Type = "HostPciPassthruSystem"
		p.PciPassthruInfo = infos
		simulator.Map.Put(p)
		ref := p.Self
		host.ConfigManager.PciPassthruSystem = &ref
		passthru[host.Self] = p
	}
}

// computeResource returns the ComputeResource part of a (cluster) compute resource.
func computeResource(obj mo.Reference) *mo.ComputeResource {
	switch x := obj.(type) {
	case *mo.ComputeResource:
		return x
	case *simulator.ClusterComputeResource:
		return &x.ComputeResource
	}
	return nil
}

func computeResources() []*mo.ComputeResource {
	var out []*mo.ComputeResource
	for _, kind := range []string{"ComputeResource", "ClusterComputeResource"} {
		for _, e := range simulator.Map.All(kind) {
			if cr := computeResource(e); cr != nil {
				out = append(out, cr)
			}
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// EnvironmentBrowser.QueryConfigTarget
// ---------------------------------------------------------------------------

// EnvironmentBrowser adds PCI passthrough targets to the simulator's QueryConfigTarget.
type EnvironmentBrowser struct {
	simulator.EnvironmentBrowser
}

func wrapEnvironmentBrowsers() {
	for _, cr := range computeResources() {
		if cr.EnvironmentBrowser == nil {
			continue
		}
		if b, ok := simulator.Map.Get(*cr.EnvironmentBrowser).(*simulator.EnvironmentBrowser); ok {
			simulator.Map.Put(&EnvironmentBrowser{*b})
		}
	}
}

func (b *EnvironmentBrowser) QueryConfigTarget(ctx *simulator.Context, req *types.QueryConfigTarget) soap.HasFault {
	var hosts []types.ManagedObjectReference
	if req.Host != nil {
		if _, ok := simulator.Map.Get(*req.Host).(*simulator.HostSystem); !ok {
			return &methods.QueryConfigTargetBody{
				Fault_: simulator.Fault("", &types.ManagedObjectNotFound{Obj: *req.Host}),
			}
		}
		hosts = append(hosts, *req.Host)
	} else {
		for _, cr := range computeResources() {
			if cr.EnvironmentBrowser != nil && *cr.EnvironmentBrowser == b.Self {
				hosts = append(hosts, cr.Host...)
			}
		}
	}

	res := b.EnvironmentBrowser.QueryConfigTarget(ctx, req)
	body, ok := res.(*methods.QueryConfigTargetBody)
	if !ok || body.Res == nil || body.Res.Returnval == nil {
		return res
	}
	target := body.Res.Returnval
	type model struct{ vendor, device int16 }
	seen := map[model]bool{}
	for _, ref := range hosts {
		p := passthru[ref]
		if p == nil {
			continue
		}
		for _, d := range p.devices() {
			if !d.enabled {
				continue
			}
			target.PciPassthrough = append(target.PciPassthrough, &types.VirtualMachinePciPassthroughInfo{
				VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: d.dev.Id},
				PciDevice:                d.dev,
				SystemId:                 p.systemID,
			})
			m := model{d.dev.VendorId, d.dev.DeviceId}
			if !seen[m] {
				seen[m] = true
				target.DynamicPassthrough = append(target.DynamicPassthrough, types.VirtualMachineDynamicPassthroughInfo{
					VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: d.dev.DeviceName},
					VendorName:               d.dev.VendorName,
					DeviceName:               d.dev.DeviceName,
					VendorId:                 int32(uint16(d.dev.VendorId)),
					DeviceId:                 int32(uint16(d.dev.DeviceId)),
				})
			}
		}
	}
	return body
}

// ---------------------------------------------------------------------------
// SOAP front handler: rules checked before the simulator acts
// ---------------------------------------------------------------------------

// guarded lists the methods the front handler looks at; any other request
// goes to the simulator untouched.
var guarded = []string{
	"PowerOnVM_Task", "PowerOnMultiVM_Task", "CreateVM_Task", "CloneVM_Task", "RegisterVM_Task",
	"ImportVApp", "Rename_Task", "MoveIntoFolder_Task", "RebootHost_Task", "ReconfigVM_Task",
	"SetField", "SetCustomValue",
}

type frontHandler struct {
	inner       http.Handler
	searchIndex types.ManagedObjectReference
	mu          sync.Mutex // one guarded request at a time: check and act are atomic
}

// reply is an answer the front handler gives instead of the simulator.
type reply struct {
	status int
	body   string
}

func typeFunc(name string) (reflect.Type, bool) {
	f := types.TypeFunc()
	if t, ok := f(name); ok {
		return t, ok
	}
	if kind := strings.SplitN(name, ":", 2); len(kind) == 2 {
		return f(kind[1])
	}
	return nil, false
}

func (g *frontHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || (r.URL.Path != "/sdk" && r.URL.Path != "/sdk/vimService") {
		g.inner.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	interesting := false
	for _, name := range guarded {
		if bytes.Contains(body, []byte(name)) {
			interesting = true
			break
		}
	}
	if !interesting {
		g.inner.ServeHTTP(w, r)
		return
	}
	method, err := simulator.UnmarshalBody(typeFunc, body)
	if err != nil || !contains(guarded, method.Name) {
		g.inner.ServeHTTP(w, r)
		return
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.authenticated(r) { // let the simulator answer NotAuthenticated
		g.inner.ServeHTTP(w, r)
		return
	}
	if rep := check(method); rep != nil {
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.WriteHeader(rep.status)
		_, _ = io.WriteString(w, rep.body)
		return
	}
	after := prepare(method)
	if after == nil {
		g.inner.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	g.inner.ServeHTTP(rec, r)
	if rec.Code == http.StatusOK {
		after(rec.Body.Bytes())
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// authenticated asks the simulator whether the request's session is valid, with
// a harmless call that needs a session.
func (g *frontHandler) authenticated(r *http.Request) bool {
	probe := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="%s">`+
		`<soapenv:Body><FindByDnsName xmlns="urn:vim25"><_this type="SearchIndex">%s</_this>`+
		`<dnsName>radium-vcsim.invalid</dnsName><vmSearch>false</vmSearch></FindByDnsName></soapenv:Body></soapenv:Envelope>`,
		soapEnvNS, g.searchIndex.Value)
	req := httptest.NewRequest(http.MethodPost, r.URL.Path, strings.NewReader(probe))
	req.RemoteAddr = r.RemoteAddr
	req.Header.Set("User-Agent", r.UserAgent())
	for _, c := range r.Cookies() {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	g.inner.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

const soapEnvNS = "http://schemas.xmlsoap.org/soap/envelope/"

func envelope(inner string) string {
	return xml.Header + `<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
		`xmlns:soapenv="` + soapEnvNS + `" xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
		`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>` + inner +
		`</soapenv:Body></soapenv:Envelope>`
}

func escape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// withMessage puts msg into the fault's faultMessage (pyVmomi shows it).
func withMessage(f types.BaseMethodFault, msg string) types.BaseMethodFault {
	mf := f.GetMethodFault()
	mf.FaultMessage = append(mf.FaultMessage, types.LocalizableMessage{Key: "radium.vcsim", Message: msg})
	return f
}

// failedTask creates a task on entity that fails with fault, and answers the
// request with it, as vCenter does for a task whose precondition fails.
func failedTask(m *simulator.Method, entity types.ManagedObjectReference, name string,
	fault types.BaseMethodFault, msg string) *reply {
	fault = withMessage(fault, msg)
	task := simulator.CreateTask(entity, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	task.Info.Name = m.Name // the WSDL method name, as vCenter reports it
	ref := task.Run()
	simulator.Map.Update(task, []types.PropertyChange{{Name: "info.error",
		Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}}})
	return taskReply(m.Name, ref)
}

func taskReply(method string, ref types.ManagedObjectReference) *reply {
	return &reply{http.StatusOK, envelope(fmt.Sprintf(`<%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse>`,
		method, escape(ref.Value), method))}
}

type faultDetail struct{ fault types.BaseMethodFault }

func (d faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.fault).Elem().Name()
	start.Name = xml.Name{Local: kind + "Fault"}
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.fault, start)
}

// soapFault answers the request with a SOAP fault, as vCenter does for a
// method that is not a task.
func soapFault(fault types.BaseMethodFault, msg string) *reply {
	fault = withMessage(fault, msg)
	detail, err := xml.Marshal(faultDetail{fault})
	if err != nil {
		log.Printf("encoding fault: %s", err)
	}
	return &reply{http.StatusInternalServerError, envelope(
		`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>` + escape(msg) +
			`</faultstring><detail>` + string(detail) + `</detail></soapenv:Fault>`)}
}

func check(m *simulator.Method) *reply {
	switch req := m.Body.(type) {
	case *types.PowerOnVM_Task:
		if fault, msg := planPowerOn([]types.ManagedObjectReference{req.This}); fault != nil {
			return failedTask(m, req.This, "powerOn", fault, msg)
		}
	case *types.PowerOnMultiVM_Task:
		if fault, msg := planPowerOn(req.Vm); fault != nil {
			return failedTask(m, req.This, "powerOnMultiVM", fault, msg)
		}
	case *types.CreateVM_Task:
		if fault, msg := duplicateName(req.This, req.Config.Name, nil); fault != nil {
			return failedTask(m, req.This, "createVm", fault, msg)
		}
	case *types.CloneVM_Task:
		if fault, msg := duplicateName(req.Folder, req.Name, nil); fault != nil {
			return failedTask(m, req.This, "cloneVm", fault, msg)
		}
	case *types.RegisterVM_Task:
		if req.Name != "" {
			if fault, msg := duplicateName(req.This, req.Name, nil); fault != nil {
				return failedTask(m, req.This, "registerVm", fault, msg)
			}
		}
	case *types.ImportVApp:
		if spec, ok := req.Spec.(*types.VirtualMachineImportSpec); ok {
			folder := req.Folder
			if folder == nil {
				if dc := datacenterOf(req.This); dc != nil {
					folder = &dc.VmFolder
				}
			}
			if folder != nil {
				if fault, msg := duplicateName(*folder, spec.ConfigSpec.Name, nil); fault != nil {
					return soapFault(fault, msg)
				}
			}
		}
	case *types.Rename_Task:
		if req.This.Type == "VirtualMachine" || req.This.Type == "VirtualApp" {
			if e, ok := simulator.Map.Get(req.This).(mo.Entity); ok && e.Entity().Parent != nil {
				if fault, msg := duplicateName(*e.Entity().Parent, req.NewName, &req.This); fault != nil {
					return failedTask(m, req.This, "rename", fault, msg)
				}
			}
		}
	case *types.MoveIntoFolder_Task:
		for _, ref := range req.List {
			if ref.Type != "VirtualMachine" && ref.Type != "VirtualApp" {
				continue
			}
			if e, ok := simulator.Map.Get(ref).(mo.Entity); ok {
				if fault, msg := duplicateName(req.This, e.Entity().Name, &ref); fault != nil {
					return failedTask(m, req.This, "moveIntoFolder", fault, msg)
				}
			}
		}
	case *types.RebootHost_Task:
		return rebootHost(m, req)
	}
	return nil
}

// prepare returns what to do once the simulator has answered a request, or nil.
func prepare(m *simulator.Method) func([]byte) {
	switch req := m.Body.(type) {
	case *types.ReconfigVM_Task:
		if len(req.Spec.ExtraConfig) == 0 {
			return nil
		}
		return func([]byte) { normalizeExtraConfig(req.This) }
	case *types.SetField:
		return func([]byte) { normalizeCustomValues(req.Entity) }
	case *types.SetCustomValue:
		return func([]byte) { normalizeCustomValues(req.This) }
	case *types.CloneVM_Task:
		source := req.This
		var extra []types.BaseOptionValue
		if vm, ok := simulator.Map.Get(source).(*simulator.VirtualMachine); ok {
			simulator.Map.WithLock(vm, func() { extra = append(extra, vm.Config.ExtraConfig...) })
		}
		return func(res []byte) {
			clone := taskResult(res)
			if clone == nil {
				return
			}
			vm, ok := simulator.Map.Get(*clone).(*simulator.VirtualMachine)
			if !ok {
				return
			}
			simulator.Map.WithLock(vm, func() {
				merged := append(append([]types.BaseOptionValue(nil), extra...), vm.Config.ExtraConfig...)
				simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.extraConfig", Val: merged}})
			})
			normalizeExtraConfig(*clone)
		}
	}
	return nil
}

var taskRef = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

// taskResult returns the result of the (finished) task a response names.
func taskResult(res []byte) *types.ManagedObjectReference {
	match := taskRef.FindSubmatch(res)
	if match == nil {
		return nil
	}
	task, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: string(match[1])}).(*simulator.Task)
	if !ok || task.Info.State != types.TaskInfoStateSuccess {
		return nil
	}
	ref, ok := task.Info.Result.(types.ManagedObjectReference)
	if !ok {
		return nil
	}
	return &ref
}

// normalizeExtraConfig gives a VM's extraConfig vCenter's semantics: one entry
// per key holding the last value set, at the key's first position; an empty
// value removes the key.
func normalizeExtraConfig(ref types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		last := map[string]types.BaseOptionValue{}
		var order []string
		for _, o := range vm.Config.ExtraConfig {
			key := o.GetOptionValue().Key
			if _, seen := last[key]; !seen {
				order = append(order, key)
			}
			last[key] = o
		}
		out := make([]types.BaseOptionValue, 0, len(order))
		for _, key := range order {
			o := last[key].GetOptionValue()
			if s, isString := o.Value.(string); o.Value == nil || (isString && s == "") {
				continue
			}
			out = append(out, last[key])
		}
		if len(out) != len(vm.Config.ExtraConfig) {
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.extraConfig", Val: out}})
		}
	})
}

// normalizeCustomValues keeps one custom value per field key (the last one set).
func normalizeCustomValues(ref types.ManagedObjectReference) {
	e, ok := simulator.Map.Get(ref).(mo.Entity)
	if !ok {
		return
	}
	dedupe := func(in []types.BaseCustomFieldValue) []types.BaseCustomFieldValue {
		last := map[int32]int{}
		for i, v := range in {
			last[v.GetCustomFieldValue().Key] = i
		}
		out := make([]types.BaseCustomFieldValue, 0, len(last))
		for i, v := range in {
			if last[v.GetCustomFieldValue().Key] == i {
				out = append(out, v)
			}
		}
		return out
	}
	simulator.Map.WithLock(e, func() {
		me := e.Entity()
		me.CustomValue = dedupe(me.CustomValue)
		me.Value = dedupe(me.Value)
		simulator.Map.Update(e, []types.PropertyChange{
			{Name: "customValue", Val: me.CustomValue},
			{Name: "value", Val: me.Value},
		})
	})
}

func datacenterOf(ref types.ManagedObjectReference) *simulator.Datacenter {
	for i := 0; i < 64; i++ {
		obj := simulator.Map.Get(ref)
		if dc, ok := obj.(*simulator.Datacenter); ok {
			return dc
		}
		e, ok := obj.(mo.Entity)
		if !ok || e.Entity().Parent == nil {
			return nil
		}
		ref = *e.Entity().Parent
	}
	return nil
}

// duplicateName fails when folder already holds a VM or vApp (other than self) called name.
func duplicateName(folder types.ManagedObjectReference, name string, self *types.ManagedObjectReference) (types.BaseMethodFault, string) {
	f, ok := simulator.Map.Get(folder).(*simulator.Folder)
	if !ok || name == "" {
		return nil, ""
	}
	var children []types.ManagedObjectReference
	simulator.Map.WithLock(f, func() { children = append(children, f.ChildEntity...) })
	for _, c := range children {
		if (c.Type != "VirtualMachine" && c.Type != "VirtualApp") || (self != nil && c == *self) {
			continue
		}
		if e, ok := simulator.Map.Get(c).(mo.Entity); ok && e.Entity().Name == name {
			return &types.DuplicateName{Name: name, Object: c},
				fmt.Sprintf("The name '%s' already exists.", name)
		}
	}
	return nil, ""
}

func rebootHost(m *simulator.Method, req *types.RebootHost_Task) *reply {
	host, ok := simulator.Map.Get(req.This).(*simulator.HostSystem)
	if !ok {
		return nil
	}
	var fault types.BaseMethodFault
	var msg string
	task := simulator.CreateTask(host, "reboot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		simulator.Map.WithLock(host, func() {
			if !host.Runtime.InMaintenanceMode && !req.Force {
				msg = fmt.Sprintf("Host %s must be in maintenance mode to reboot (or use force).", host.Name)
				fault = withMessage(&types.InvalidState{}, msg)
				return
			}
			if p := passthru[host.Self]; p != nil {
				p.reboot()
			}
		})
		return nil, fault
	})
	task.Info.Name = m.Name
	ref := task.Run()
	if fault != nil {
		simulator.Map.Update(task, []types.PropertyChange{{Name: "info.error",
			Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}}})
	}
	return taskReply(m.Name, ref)
}

// ---------------------------------------------------------------------------
// Power-on rules for PCI passthrough
// ---------------------------------------------------------------------------

type claim struct {
	host types.ManagedObjectReference
	id   string
}

type vmState struct {
	vm       *simulator.VirtualMachine
	name     string
	host     *types.ManagedObjectReference
	power    types.VirtualMachinePowerState
	template bool
	memoryMB int64
	reserved bool // memoryReservationLockedToMax, or all memory reserved
	devices  []*types.VirtualPCIPassthrough
}

func snapshot(vm *simulator.VirtualMachine) vmState {
	var s vmState
	simulator.Map.WithLock(vm, func() {
		s = vmState{vm: vm, name: vm.Name, host: vm.Runtime.Host, power: vm.Runtime.PowerState}
		if vm.Config == nil {
			return
		}
		s.template = vm.Config.Template
		s.memoryMB = int64(vm.Config.Hardware.MemoryMB)
		locked := vm.Config.MemoryReservationLockedToMax
		alloc := vm.Config.MemoryAllocation
		s.reserved = (locked != nil && *locked) ||
			(alloc != nil && alloc.Reservation != nil && *alloc.Reservation >= s.memoryMB)
		for _, d := range vm.Config.Hardware.Device {
			if p, ok := d.(*types.VirtualPCIPassthrough); ok {
				s.devices = append(s.devices, p)
			}
		}
	})
	return s
}

type holder struct {
	ref  types.ManagedObjectReference
	name string
}

// held returns the passthrough devices held by powered-on VMs.
func held() map[claim]holder {
	out := map[claim]holder{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		s := snapshot(vm)
		if s.power != types.VirtualMachinePowerStatePoweredOn || s.host == nil {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			for _, d := range s.devices {
				if id := backingID(d); id != "" {
					out[claim{*s.host, id}] = holder{vm.Self, s.name}
				}
			}
		})
	}
	return out
}

// backingID is the host PCI id a passthrough device uses ("" when none yet).
func backingID(d *types.VirtualPCIPassthrough) string {
	switch b := d.Backing.(type) {
	case *types.VirtualPCIPassthroughDeviceBackingInfo:
		return b.Id
	case *types.VirtualPCIPassthroughDynamicBackingInfo:
		return b.AssignedId
	}
	return ""
}

func allowed(b *types.VirtualPCIPassthroughDynamicBackingInfo, dev types.HostPciDevice) bool {
	for _, a := range b.AllowedDevice {
		if a.VendorId == int32(uint16(dev.VendorId)) && a.DeviceId == int32(uint16(dev.DeviceId)) {
			return true
		}
	}
	return false
}

func vmFault(msg string) types.BaseMethodFault {
	return &types.GenericVmConfigFault{Reason: msg}
}

// planPowerOn checks the passthrough rules for powering on vms (in order, as
// one request) and, when they hold, assigns dynamic DirectPath devices.
func planPowerOn(refs []types.ManagedObjectReference) (types.BaseMethodFault, string) {
	taken := held()
	type assignment struct {
		vm      *simulator.VirtualMachine
		backing *types.VirtualPCIPassthroughDynamicBackingInfo
		id      string
	}
	var assign []assignment

	for _, ref := range refs {
		vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		s := snapshot(vm)
		if s.power == types.VirtualMachinePowerStatePoweredOn || s.template || len(s.devices) == 0 || s.host == nil {
			continue // the simulator answers (InvalidPowerState, template) or nothing to check
		}
		if !s.reserved {
			msg := fmt.Sprintf("Invalid memory setting: memory reservation (sched.mem.min) should be equal to memsize(%d). "+
				"VM '%s' has PCI passthrough devices, which need all of its memory reserved: "+
				"set config.memoryReservationLockedToMax (or reserve all memory).", s.memoryMB, s.name)
			return vmFault(msg), msg
		}
		host, _ := simulator.Map.Get(*s.host).(*simulator.HostSystem)
		hostName := s.host.Value
		if host != nil {
			hostName = host.Name
		}
		var devices []hostDevice
		var systemID string
		if p := passthru[*s.host]; p != nil {
			devices, systemID = p.devices(), p.systemID
		}
		find := func(id string) *hostDevice {
			for i := range devices {
				if devices[i].dev.Id == id {
					return &devices[i]
				}
			}
			return nil
		}
		for _, d := range s.devices {
			label := d.DeviceInfo.GetDescription().Label
			switch b := d.Backing.(type) {
			case *types.VirtualPCIPassthroughDeviceBackingInfo:
				hd := find(b.Id)
				var msg string
				switch {
				case hd == nil:
					msg = fmt.Sprintf("VM '%s': PCI passthrough device %s ('%s') is not a passthrough-capable device of host %s.",
						s.name, b.Id, label, hostName)
				case !hd.enabled:
					msg = fmt.Sprintf("VM '%s': PCI device %s on host %s is not enabled for passthrough.", s.name, b.Id, hostName)
				case b.SystemId != "" && b.SystemId != systemID:
					msg = fmt.Sprintf("VM '%s': PCI passthrough device %s has systemId %s, but host %s has systemId %s.",
						s.name, b.Id, b.SystemId, hostName, systemID)
				}
				if msg != "" {
					return vmFault(msg), msg
				}
				c := claim{*s.host, b.Id}
				if h, busy := taken[c]; busy && h.ref != ref {
					msg := fmt.Sprintf("PCI passthrough device %s on host %s is already in use by powered-on VM '%s'; "+
						"a passthrough device can be given to one powered-on VM at a time.", b.Id, hostName, h.name)
					return &types.ResourceInUse{Type: "HostPciDevice", Name: b.Id}, msg
				}
				taken[c] = holder{ref, s.name}
			case *types.VirtualPCIPassthroughDynamicBackingInfo:
				pick := ""
				// Keep the device used last time when it is still free.
				if hd := find(b.AssignedId); hd != nil && hd.enabled && allowed(b, hd.dev) {
					if _, busy := taken[claim{*s.host, hd.dev.Id}]; !busy {
						pick = hd.dev.Id
					}
				}
				for i := 0; pick == "" && i < len(devices); i++ {
					hd := devices[i]
					if _, busy := taken[claim{*s.host, hd.dev.Id}]; hd.enabled && !busy && allowed(b, hd.dev) {
						pick = hd.dev.Id
					}
				}
				if pick == "" {
					msg := fmt.Sprintf("VM '%s': no free passthrough-enabled PCI device on host %s matches "+
						"dynamic DirectPath device '%s'.", s.name, hostName, label)
					return &types.InsufficientResourcesFault{}, msg
				}
				taken[claim{*s.host, pick}] = holder{ref, s.name}
				assign = append(assign, assignment{vm, b, pick})
			}
		}
	}

	for _, a := range assign {
		simulator.Map.WithLock(a.vm, func() {
			a.backing.AssignedId = a.id
			simulator.Map.Update(a.vm, []types.PropertyChange{
				{Name: "config.hardware.device", Val: a.vm.Config.Hardware.Device}})
		})
	}
	return nil, ""
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err = tmp.WriteString(content); err == nil {
		err = tmp.Close()
	} else {
		_ = tmp.Close()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// serverCertificate makes a CA and a server certificate for 127.0.0.1 signed by
// it, as vCenter's VMCA does, and writes the CA to caFile, so that clients can
// verify the server with a CA bundle (Go's built-in test certificate is RSA-1024,
// which OpenSSL refuses as too weak) or pin its SHA-256 thumbprint.
func serverCertificate(caFile string) (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "radium-vcsim CA", Organization: []string{"Radium"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1", Organization: []string{"Radium"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(2 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	if caFile != "" {
		if err := writeFileAtomic(caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))); err != nil {
			return tls.Certificate{}, err
		}
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}, nil
}

func main() {
	clusters := flag.Int("clusters", 1, "clusters in datacenter DC0")
	hostsPerCluster := flag.Int("hosts-per-cluster", 2, "ESXi hosts per cluster")
	standalone := flag.Int("standalone-hosts", 1, "standalone ESXi hosts")
	gpus := flag.Int("gpus-per-host", 4, fmt.Sprintf("GPUs per host (0-%d)", maxGPUs))
	vms := flag.Int("vms", 1, "VMs per cluster / standalone host (powered on, no GPUs)")
	urlFile := flag.String("url-file", "", "write the server URL (https://user:pass@127.0.0.1:PORT/sdk) to this file once serving")
	username := flag.String("username", "", "accept only this user (with -password); default: any non-empty user and password")
	password := flag.String("password", "", "the password for -username; better in the environment's VCSIM_PASSWORD, which ps does not show")
	stdinEOF := flag.Bool("exit-on-stdin-eof", false, "stop when stdin reaches end of file (the parent went away)")
	caFile := flag.String("ca-file", "", "write the PEM of the CA that signed the server's certificate to this file")
	flag.Parse()
	if *password == "" {
		*password = os.Getenv("VCSIM_PASSWORD")
	}
	os.Unsetenv("VCSIM_PASSWORD")

	for name, v := range map[string]int{"clusters": *clusters, "hosts-per-cluster": *hostsPerCluster,
		"standalone-hosts": *standalone, "gpus-per-host": *gpus, "vms": *vms} {
		if v < 0 {
			log.Fatalf("-%s must not be negative", name)
		}
	}
	if *gpus > maxGPUs {
		log.Fatalf("-gpus-per-host must be at most %d", maxGPUs)
	}
	if (*username == "") != (*password == "") {
		log.Fatal("-username and -password go together")
	}

	m := simulator.VPX()
	m.Datacenter = 1
	m.Cluster = *clusters
	m.ClusterHost = *hostsPerCluster
	m.Host = *standalone
	m.Machine = *vms
	m.ServiceContent.About.ApiVersion = apiVersion
	m.ServiceContent.About.Version = "7.0.3"
	m.ServiceContent.About.FullName = "VMware vCenter Server 7.0.3 build-19480866 (govmomi simulator)"
	if err := m.Create(); err != nil {
		m.Remove()
		log.Fatalf("creating the inventory: %s", err)
	}
	addGPUs(*gpus)
	wrapEnvironmentBrowsers()

	cert, err := serverCertificate(*caFile)
	if err != nil {
		m.Remove()
		log.Fatalf("making the server certificate: %s", err)
	}
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	m.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	if *username != "" {
		m.Service.Listen.User = url.UserPassword(*username, *password)
	}
	s := m.Service.NewServer()
	// Nobody knows the port yet, so no request can be in flight.
	s.Config.Handler = &frontHandler{inner: s.Config.Handler, searchIndex: vpx.ServiceContent.SearchIndex.Reference()}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- syscall.SIGTERM
		}()
	}

	if *urlFile != "" {
		if err := writeFileAtomic(*urlFile, s.URL.String()+"\n"); err != nil {
			s.Close()
			m.Remove()
			log.Fatalf("writing %s: %s", *urlFile, err)
		}
	}
	log.Printf("radium-vcsim serving %s (API %s)", s.URL.String(), apiVersion)

	sig := <-stop
	log.Printf("radium-vcsim stopping (%s)", sig)
	s.Close()
	m.Remove()
}
