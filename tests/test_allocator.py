"""The lease allocator: placement, packing, filters, the FCFS queue, release, errors.

The allocator is pure bookkeeping (callers pass `now`), so these tests drive it
directly with real `Device` records.
"""

from __future__ import annotations

import pytest

from radium.remoting._allocator import Allocator, describe_request, validate_request
from radium.remoting._errors import (
    AllocationError,
    LeaseNotFound,
    NotAvailable,
    Unsatisfiable,
    UsageError,
)
from radium.remoting._filters import parse_filter
from radium.remoting.schema import AllocationRequest, Device, ServerInfo

MIB = 1 << 20
GIB = 1 << 30
SERVER = ServerInfo(name="app1", hostname="app1.lab", version="0.1.0")


def dev(id: str, gib: float = 16, model: str = "Tesla V100", health: str = "ok", **kw) -> Device:
    return Device(
        id=id,
        backend="nvml",
        vendor="NVIDIA",
        model=model,
        memory_bytes=int(gib * GIB),
        health=health,  # type: ignore[arg-type]
        **kw,
    )


def alloc(*devices: Device) -> Allocator:
    a = Allocator(SERVER)
    a.set_devices(list(devices))
    return a


def req(count: int = 1, fraction=None, memory_mib=None, filters=()) -> AllocationRequest:
    return AllocationRequest(
        count=count,
        fraction=fraction,
        memory_mib=memory_mib,
        filters=[parse_filter(f) for f in filters],
    )


def grab(a: Allocator, r: AllocationRequest, session: str = "s1", client: str = "vm1", now: float = 0.0):
    return a.try_acquire(session, client, r, now)


def placed(lease) -> list[str]:
    return [p.device_id for p in lease.parts]


# --- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "r, words",
    [
        (req(count=0), "-n must be at least 1, got 0"),
        (req(count=-2), "-n must be at least 1, got -2"),
        (req(fraction=0.5, memory_mib=100), "not both"),
        (req(fraction=0.0), "-p must be a fraction with 0 < F <= 1, got 0.0"),
        (req(fraction=-0.5), "-p must be a fraction"),
        (req(fraction=1.5), "-p must be a fraction"),
        (req(fraction=float("nan")), "-p must be a fraction"),
        (req(memory_mib=0), "-m must be a positive number of MiB, got 0"),
        (req(memory_mib=-1), "-m must be a positive number of MiB"),
    ],
)
def test_malformed_requests_are_usage_errors_everywhere(r, words):
    with pytest.raises(UsageError) as exc:
        validate_request(r)
    assert words in str(exc.value)
    a = alloc(dev("d0"), dev("d1"))
    with pytest.raises(UsageError):
        grab(a, r)
    with pytest.raises(UsageError):
        a.enqueue("s1", "vm1", r, deadline=10)
    assert a.leases == {} and not a.queue


@pytest.mark.parametrize("r", [req(), req(fraction=1.0), req(fraction=1e-9), req(memory_mib=1), req(count=2)])
def test_well_formed_requests_pass_validation(r):
    validate_request(r)


def test_describe_request_reads_as_a_sentence():
    assert describe_request(req()) == "1 device"
    assert describe_request(req(count=2, fraction=0.5)) == "2 devices at 0.5 of each"
    assert describe_request(req(memory_mib=512)) == "1 device with 512 MiB each"
    assert (
        describe_request(req(count=3, filters=["device.name=V100", "device.memory>=16000"]))
        == "3 devices matching device.name=V100 and device.memory>=16000"
    )


# --- whole devices ----------------------------------------------------------------


def test_a_whole_device_lease_takes_all_of_its_memory():
    a = alloc(dev("d0", 16))
    lease = grab(a, req(), client="vm1", now=12.5)
    assert lease.id.startswith("L-")
    assert lease.client == "vm1" and lease.server == "app1" and lease.granted_at == 12.5
    assert len(lease.parts) == 1
    part = lease.parts[0]
    assert part.device_id == "d0" and part.memory_bytes == 16 * GIB and part.fraction == 1.0
    assert a.allocated("d0") == 16 * GIB
    assert a.leases == {lease.id: lease}
    with pytest.raises(NotAvailable, match="1 device at 0.01 of each is not free now"):
        grab(a, req(fraction=0.01), client="vm2")


def test_n_devices_are_n_distinct_devices():
    a = alloc(dev("d0"), dev("d1"), dev("d2"))
    lease = grab(a, req(count=3))
    assert sorted(placed(lease)) == ["d0", "d1", "d2"]
    assert all(p.fraction == 1.0 for p in lease.parts)


def test_whole_requests_never_land_on_a_partly_used_device():
    a = alloc(dev("d0"), dev("d1"))
    grab(a, req(fraction=0.25, filters=["device.id=d0"]))
    whole = grab(a, req(), session="s2", client="vm2")
    assert placed(whole) == ["d1"]
    with pytest.raises(NotAvailable):
        grab(a, req(), session="s3", client="vm3")
    with pytest.raises(NotAvailable):
        grab(a, req(count=2), session="s3", client="vm3")


def test_lease_ids_are_unique():
    a = alloc(*[dev(f"d{i}") for i in range(50)])
    ids = {grab(a, req()).id for _ in range(50)}
    assert len(ids) == 50


# --- partial leases -----------------------------------------------------------------


def test_partial_leases_share_a_device_while_their_sum_fits():
    a = alloc(dev("d0", 16))
    first = grab(a, req(fraction=0.5), client="vm1")
    second = grab(a, req(fraction=0.5), session="s2", client="vm2")
    assert placed(first) == placed(second) == ["d0"]
    assert first.parts[0].memory_bytes == second.parts[0].memory_bytes == 8 * GIB
    assert first.parts[0].fraction == 0.5
    assert a.allocated("d0") == 16 * GIB
    with pytest.raises(NotAvailable) as exc:
        grab(a, req(fraction=0.1), session="s3", client="vm3")
    assert "1 device at 0.1 of each is not free now" in str(exc.value)
    assert "d0: 0 of 16384 MiB free" in str(exc.value)


def test_a_partial_lease_by_memory_takes_exactly_that_many_mib():
    a = alloc(dev("d0", 16))
    lease = grab(a, req(memory_mib=4096))
    assert lease.parts[0].memory_bytes == 4096 * MIB
    assert lease.parts[0].fraction == pytest.approx(0.25)
    assert a.allocated("d0") == 4 * GIB
    grab(a, req(memory_mib=12288), session="s2")  # exactly the rest
    with pytest.raises(NotAvailable, match="d0: 0 of 16384 MiB free"):
        grab(a, req(memory_mib=1), session="s3")


@pytest.mark.parametrize("memory_bytes", [16945512448, 16 * GIB + 1, 11, 999_999_999_999])
@pytest.mark.parametrize("fraction, n", [(0.5, 2), (0.25, 4), (0.2, 5), (0.1, 10)])
def test_fractions_that_sum_to_one_fit_on_one_device_of_any_size(memory_bytes, fraction, n):
    a = Allocator(SERVER)
    a.set_devices([Device(id="d0", backend="nvml", vendor="NVIDIA", model="V100", memory_bytes=memory_bytes)])
    leases = [grab(a, req(fraction=fraction), session=f"s{i}", client=f"vm{i}") for i in range(n)]
    assert all(placed(lease) == ["d0"] for lease in leases)
    assert a.allocated("d0") <= memory_bytes


def test_a_tiny_fraction_still_takes_at_least_one_byte():
    a = alloc(dev("d0"))
    lease = grab(a, req(fraction=1e-15))
    assert lease.parts[0].memory_bytes == 1
    assert a.allocated("d0") == 1


def test_memory_requests_only_go_to_devices_big_enough():
    a = alloc(dev("small", 8), dev("big", 32))
    lease = grab(a, req(memory_mib=16384))
    assert placed(lease) == ["big"]
    with pytest.raises(Unsatisfiable):
        grab(a, req(count=2, memory_mib=16384))


# --- best-fit packing ---------------------------------------------------------------


def test_partial_leases_pack_onto_a_device_already_in_use():
    a = alloc(dev("d0"), dev("d1"))
    grab(a, req(fraction=0.5, filters=["device.id=d1"]))  # d1 half used, d0 untouched
    packed = grab(a, req(fraction=0.25), session="s2")
    assert placed(packed) == ["d1"]  # not the first device in the inventory
    whole = grab(a, req(), session="s3")  # d0 was kept whole for this
    assert placed(whole) == ["d0"]


def test_best_fit_prefers_the_least_memory_left_over():
    a = alloc(dev("big", 32), dev("mid", 16), dev("small", 8))
    assert placed(grab(a, req(memory_mib=6144))) == ["small"]
    assert placed(grab(a, req(memory_mib=6144), session="s2")) == ["mid"]  # small has 2 GiB left
    assert placed(grab(a, req(memory_mib=2048), session="s3")) == ["small"]  # fills it exactly


def test_best_fit_ties_go_by_inventory_order():
    a = alloc(dev("b"), dev("a"), dev("c"))
    assert placed(grab(a, req(fraction=0.5))) == ["b"]
    assert placed(grab(a, req(), session="s2")) == ["a"]
    assert placed(grab(a, req(), session="s3")) == ["c"]


def test_multi_device_partial_requests_take_the_best_fits():
    a = alloc(dev("d0"), dev("d1"), dev("d2"))
    grab(a, req(fraction=0.5, filters=["device.id=d2"]))
    lease = grab(a, req(count=2, fraction=0.5), session="s2")
    assert placed(lease) == ["d2", "d0"]  # d2 filled exactly, then the first free one
    assert a.allocated("d2") == 16 * GIB and a.allocated("d0") == 8 * GIB and a.allocated("d1") == 0


def test_a_partial_request_needs_room_on_each_of_its_devices():
    a = alloc(dev("d0"), dev("d1"))
    grab(a, req(fraction=0.75, filters=["device.id=d0"]))
    with pytest.raises(NotAvailable):
        grab(a, req(count=2, fraction=0.5), session="s2")
    assert a.allocated("d1") == 0  # nothing half-granted


# --- filters ------------------------------------------------------------------------


def test_filters_restrict_placement():
    a = alloc(dev("d0", model="Tesla V100"), dev("d1", 40, model="A100-SXM4-40GB"))
    assert placed(grab(a, req(filters=["device.name~a100"]))) == ["d1"]
    with pytest.raises(NotAvailable):
        grab(a, req(filters=["device.memory>=20000"]), session="s2")
    assert placed(grab(a, req(filters=["device.vendor=nvidia"]), session="s3")) == ["d0"]


def test_server_filters_apply_to_every_device():
    a = alloc(dev("d0"), dev("d1"))
    assert len(grab(a, req(count=2, filters=["server.name=APP1"])).parts) == 2
    b = alloc(dev("d0"))
    with pytest.raises(Unsatisfiable, match="0 matching the filters"):
        grab(b, req(filters=["server.hostname~elsewhere"]))


def test_no_device_matching_the_filters_can_never_be_met():
    a = alloc(dev("d0"), dev("d1"))
    with pytest.raises(Unsatisfiable) as exc:
        grab(a, req(filters=["device.name=H100"]))
    assert str(exc.value) == (
        "1 device matching device.name=H100 can never be met: app1 has 2 device(s), 0 matching the filters"
    )
    assert exc.value.detail == {"server": "app1"}


# --- failed devices -----------------------------------------------------------------


def test_failed_devices_are_never_allocated():
    a = alloc(dev("d0", health="failed"), dev("d1"), dev("d2", health="unknown"))
    got = {placed(grab(a, req(fraction=0.1), session=f"s{i}"))[0] for i in range(12)}
    assert got <= {"d1", "d2"}
    assert a.allocated("d0") == 0
    assert "d0: failed health check" in a.free_summary()


def test_too_few_healthy_devices_can_never_be_met_and_names_the_failed_ones():
    a = alloc(dev("d0", health="failed"), dev("d1"), dev("d2", health="failed"))
    with pytest.raises(Unsatisfiable) as exc:
        grab(a, req(count=2))
    assert str(exc.value) == (
        "2 devices can never be met: app1 has 3 device(s), 3 matching the filters, "
        "of which 2 failed health checks (d0, d2)"
    )


def test_a_device_that_fails_later_is_not_handed_to_waiters():
    a = alloc(dev("d0"), dev("d1"))
    l0 = grab(a, req(), session="s0")
    l1 = grab(a, req(), session="s1")
    a.enqueue("s2", "vm2", req(), deadline=100)
    a.set_devices([dev("d0", health="failed")])
    a.release(l0.id)
    assert a.pump(now=1) == []
    assert a.allocated("d0") == 0
    a.release(l1.id)
    [(_, lease)] = a.pump(now=2)
    assert placed(lease) == ["d1"]


# --- "can never be met" vs "not free now" -------------------------------------------


def test_more_devices_than_exist_can_never_be_met():
    a = alloc(dev("d0"), dev("d1"))
    with pytest.raises(Unsatisfiable) as exc:
        grab(a, req(count=3))
    assert str(exc.value) == "3 devices can never be met: app1 has 2 device(s), 2 matching the filters"
    with pytest.raises(Unsatisfiable):
        a.enqueue("s1", "vm1", req(count=3), deadline=10)
    assert not a.queue


def test_more_memory_than_any_device_has_names_the_largest():
    a = alloc(dev("d0", 16), dev("d1", 32))
    with pytest.raises(Unsatisfiable) as exc:
        grab(a, req(memory_mib=40000))
    assert "1 device with 40000 MiB each can never be met" in str(exc.value)
    assert "the largest has 32768 MiB" in str(exc.value)


def test_busy_but_possible_is_not_free_now_and_lists_what_is_free():
    a = alloc(dev("d0", 16), dev("d1", 8))
    grab(a, req(filters=["device.id=d0"]))
    grab(a, req(memory_mib=2048, filters=["device.id=d1"]), session="s2")
    with pytest.raises(NotAvailable) as exc:
        grab(a, req(count=2), session="s3")
    assert not isinstance(exc.value, Unsatisfiable)
    assert str(exc.value) == (
        "2 devices is not free now. Free: d0: 0 of 16384 MiB free; d1: 6144 of 8192 MiB free"
    )
    assert isinstance(exc.value, AllocationError) and exc.value.exit_code == 3


def test_an_empty_appliance_can_never_meet_anything():
    a = Allocator(SERVER)
    with pytest.raises(Unsatisfiable, match="app1 has 0 device"):
        grab(a, req())
    assert a.free_summary() == "no devices"


# --- the first-come-first-served queue ----------------------------------------------


def test_nothing_jumps_the_queue_even_when_it_would_fit():
    a = alloc(dev("d0"), dev("d1"))
    grab(a, req(count=2))
    a.enqueue("s2", "vm2", req(count=2), deadline=100)
    a.set_devices([dev("d2")])  # a new free device: a 1-device request would fit on it
    with pytest.raises(NotAvailable) as exc:
        grab(a, req(), session="s3")
    assert "1 request(s) are waiting ahead" in str(exc.value)
    assert exc.value.detail == {"queue_length": 1}
    assert a.allocated("d2") == 0


def test_pump_grants_waiters_in_arrival_order():
    a = alloc(dev("d0"))
    held = grab(a, req(), session="s0")
    w1 = a.enqueue("s1", "vm1", req(fraction=0.5), deadline=100)
    w2 = a.enqueue("s2", "vm2", req(fraction=0.5), deadline=100)
    w3 = a.enqueue("s3", "vm3", req(fraction=0.5), deadline=100)
    assert w1.id < w2.id < w3.id
    assert a.pump(now=1) == []
    a.release(held.id)
    granted = a.pump(now=5)
    assert [w.id for w, _ in granted] == [w1.id, w2.id]
    assert [lease.client for _, lease in granted] == ["vm1", "vm2"]
    assert all(lease.granted_at == 5 for _, lease in granted)
    assert list(a.queue) == [w3]
    assert a.session_leases("s1") == [granted[0][1].id]
    assert a.session_leases("s2") == [granted[1][1].id]


def test_the_head_of_the_queue_blocks_those_behind_it():
    a = alloc(dev("d0"), dev("d1"))
    l0 = grab(a, req(), session="s0")
    l1 = grab(a, req(), session="s0")
    big = a.enqueue("s1", "vm1", req(count=2), deadline=100)
    small = a.enqueue("s2", "vm2", req(), deadline=100)
    a.release(l0.id)
    assert a.pump(now=1) == []  # small would fit on the freed device, but big is first
    assert list(a.queue) == [big, small]
    assert a.allocated("d0") == 0
    a.release(l1.id)
    [(w, lease)] = a.pump(now=2)
    assert w is big and sorted(placed(lease)) == ["d0", "d1"]
    assert list(a.queue) == [small]


def test_pump_on_an_empty_queue_grants_nothing():
    a = alloc(dev("d0"))
    assert a.pump(now=0) == []
    assert a.leases == {}


def test_expired_waiters_leave_the_queue_and_stop_blocking():
    a = alloc(dev("d0"))
    held = grab(a, req(), session="s0")
    early = a.enqueue("s1", "vm1", req(), deadline=10)
    exact = a.enqueue("s2", "vm2", req(), deadline=20)
    late = a.enqueue("s3", "vm3", req(fraction=0.5), deadline=30)
    assert a.expire_waiters(now=9.99) == []
    assert a.expire_waiters(now=20) == [early, exact]  # a deadline of `now` has passed
    assert list(a.queue) == [late]
    a.release(held.id)
    [(w, _)] = a.pump(now=21)
    assert w is late


def test_cancelled_waiters_leave_the_queue():
    a = alloc(dev("d0"))
    grab(a, req(), session="s0")
    w1 = a.enqueue("s1", "vm1", req(), deadline=100)
    w2 = a.enqueue("s2", "vm2", req(), deadline=100)
    a.cancel_waiter(w1)
    a.cancel_waiter(w1)  # twice is harmless
    assert list(a.queue) == [w2]


def test_once_the_queue_drains_requests_are_granted_at_once_again():
    a = alloc(dev("d0"), dev("d1"))
    held = grab(a, req(count=2), session="s0")
    a.enqueue("s1", "vm1", req(), deadline=100)
    a.release(held.id)
    assert len(a.pump(now=1)) == 1
    assert placed(grab(a, req(), session="s2")) == ["d1"]


# --- release --------------------------------------------------------------------------


def test_release_frees_the_memory_for_the_next_request():
    a = alloc(dev("d0"))
    lease = grab(a, req(fraction=0.75))
    assert a.release(lease.id) is lease
    assert a.allocated("d0") == 0
    assert a.leases == {}
    assert a.session_leases("s1") == []
    assert placed(grab(a, req(), session="s2")) == ["d0"]


def test_only_the_holder_can_release_a_lease():
    a = alloc(dev("d0"))
    lease = grab(a, req(), client="vm1")
    with pytest.raises(LeaseNotFound) as exc:
        a.release(lease.id, client="vm2")
    assert str(exc.value) == f"no lease {lease.id} held by vm2 on app1"
    assert lease.id in a.leases and a.allocated("d0") == 16 * GIB
    a.release(lease.id, client="vm1")
    assert a.leases == {}


def test_releasing_an_unknown_or_released_lease_fails():
    a = alloc(dev("d0"))
    with pytest.raises(LeaseNotFound, match="no lease L-nope held by anyone on app1"):
        a.release("L-nope")
    lease = grab(a, req(fraction=0.5))
    a.release(lease.id)
    with pytest.raises(LeaseNotFound):
        a.release(lease.id)
    assert a.allocated("d0") == 0  # not freed twice


def test_releasing_a_session_drops_its_leases_and_waiters_only():
    a = alloc(dev("d0"), dev("d1"), dev("d2"))
    mine1 = grab(a, req(fraction=0.5), session="mine")
    mine2 = grab(a, req(), session="mine")
    theirs = grab(a, req(), session="theirs", client="vm2")
    w_mine = a.enqueue("mine", "vm1", req(count=2), deadline=100)
    w_theirs = a.enqueue("theirs", "vm2", req(), deadline=100)
    assert a.session_leases("mine") == [mine1.id, mine2.id]

    released, dropped = a.release_session("mine")
    assert {lease.id for lease in released} == {mine1.id, mine2.id}
    assert dropped == [w_mine]
    assert set(a.leases) == {theirs.id}
    assert list(a.queue) == [w_theirs]
    assert sum(a.allocated(d) for d in a.devices) == 16 * GIB
    assert a.session_leases("mine") == []
    assert a.release_session("mine") == ([], [])
    assert a.release_session("never-seen") == ([], [])


# --- status ---------------------------------------------------------------------------


def test_status_shows_each_device_with_its_holders():
    a = alloc(dev("d0"), dev("d1"))
    half = grab(a, req(fraction=0.5), client="vm1")
    whole = grab(a, req(), session="s2", client="vm2")
    by_id = {st.device.id: st for st in a.status()}
    assert set(by_id) == {"d0", "d1"}
    shared = by_id[placed(half)[0]]
    assert shared.memory_allocated_bytes == 8 * GIB
    assert [(h.lease_id, h.client, h.memory_bytes, h.fraction) for h in shared.leases] == [
        (half.id, "vm1", 8 * GIB, 0.5)
    ]
    full = by_id[placed(whole)[0]]
    assert full.memory_allocated_bytes == 16 * GIB
    assert [(h.lease_id, h.client, h.fraction) for h in full.leases] == [(whole.id, "vm2", 1.0)]
    a.release(half.id)
    assert {st.device.id: len(st.leases) for st in a.status()}[placed(half)[0]] == 0


def test_devices_given_at_construction_start_free():
    a = Allocator(SERVER, devices={"d0": dev("d0")})
    assert a.allocated("d0") == 0
    assert placed(grab(a, req())) == ["d0"]


def test_a_waiter_that_a_failed_device_makes_impossible_leaves_the_queue():
    from radium.remoting._errors import Unsatisfiable

    alloc = Allocator(server=SERVER)
    alloc.set_devices([dev("a"), dev("b")])
    holder = alloc.try_acquire("s0", "c0", AllocationRequest(count=1), now=0)
    waiter = alloc.enqueue("s1", "c1", AllocationRequest(count=2), deadline=100)
    behind = alloc.enqueue("s2", "c2", AllocationRequest(count=1), deadline=100)
    alloc.devices["b"].health = "failed"
    dropped = alloc.drop_infeasible()
    assert [(w, type(e)) for w, e in dropped] == [(waiter, Unsatisfiable)]
    assert list(alloc.queue) == [behind]  # and it no longer blocks those behind it
    alloc.release(holder.id)
    assert [w for w, _ in alloc.pump(now=1)] == [behind]
