"""Device and server filters: parsing (and its errors) and matching."""

from __future__ import annotations

import pytest

from radium.remoting._errors import UsageError
from radium.remoting._filters import KEYS, NUMERIC, describe, matches, matches_all, parse_filter
from radium.remoting.schema import Device, Filter, ServerInfo

MIB = 1 << 20

V100 = Device(
    id="nvml:0000:3b:00.0",
    backend="nvml",
    vendor="NVIDIA Corporation",
    model="Tesla V100-PCIE-16GB",
    memory_bytes=16384 * MIB,
    pci_address="0000:3b:00.0",
)
POCL = Device(id="opencl:0:0", backend="opencl", vendor="pocl", model="cpu-x86-64", memory_bytes=4096 * MIB)
SERVER = ServerInfo(name="App1", hostname="app1.lab.example", version="0.1.0")


def m(text: str, device: Device = V100, server: ServerInfo = SERVER) -> bool:
    return matches(parse_filter(text), device, server)


# --- parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, op, value",
    [
        ("device.name=V100", "device.name", "=", "V100"),
        ("device.name!=V100", "device.name", "!=", "V100"),
        ("device.name~v100", "device.name", "~", "v100"),
        ("device.memory<16000", "device.memory", "<", "16000"),
        ("device.memory<=16000", "device.memory", "<=", "16000"),
        ("device.memory>16000", "device.memory", ">", "16000"),
        ("device.memory>=16000", "device.memory", ">=", "16000"),
        ("device.memory>=1.5e4", "device.memory", ">=", "1.5e4"),
        ("  device.model =  Tesla V100-PCIE  ", "device.model", "=", "Tesla V100-PCIE"),
        ("server.hostname~lab", "server.hostname", "~", "lab"),
        ("device.pci=0000:3b:00.0", "device.pci", "=", "0000:3b:00.0"),
        ("device.name=a=b", "device.name", "=", "a=b"),
    ],
)
def test_a_filter_parses_into_key_op_value(text, key, op, value):
    assert parse_filter(text) == Filter(key=key, op=op, value=value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "device.name",
        "device",
        "=V100",
        "device.name V100",
        "name=V100",
        "Device.Name=V100",
        "device-name=x",
    ],
)
def test_bad_syntax_is_a_usage_error_that_shows_the_form(text):
    with pytest.raises(UsageError) as exc:
        parse_filter(text)
    msg = str(exc.value)
    assert msg.startswith(f"invalid filter {text!r}: expected KEY OP VALUE")
    assert "device.name=V100" in msg and "= != < <= > >= ~" in msg
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("text, key", [("device.colour=red", "device.colour"), ("gpu.name=V100", "gpu.name")])
def test_an_unknown_key_is_named_with_the_known_ones(text, key):
    with pytest.raises(UsageError) as exc:
        parse_filter(text)
    msg = str(exc.value)
    assert msg.startswith(f"unknown filter key {key!r}; known keys: ")
    for known in KEYS:
        assert known in msg


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
@pytest.mark.parametrize("key", sorted(set(KEYS) - NUMERIC))
def test_ordering_only_applies_to_numeric_keys(key, op):
    with pytest.raises(UsageError) as exc:
        parse_filter(f"{key}{op}5")
    assert f"{op} only applies to numeric keys (device.memory)" in str(exc.value)


@pytest.mark.parametrize(
    "text, value",
    [
        ("device.memory>=lots", "lots"),
        ("device.memory=16GB", "16GB"),
        ("device.memory<", ""),
        ("device.memory~x", "x"),
    ],
)
def test_a_numeric_key_takes_a_number(text, value):
    with pytest.raises(UsageError) as exc:
        parse_filter(text)
    assert str(exc.value) == f"filter {text!r}: device.memory takes a number, got {value!r}"


@pytest.mark.parametrize("key", list(KEYS))
def test_every_documented_key_parses(key):
    value = "1" if key in NUMERIC else "x"
    assert parse_filter(f"{key}={value}").key == key


# --- matching: text keys ------------------------------------------------------------


def test_equals_is_whole_value_and_case_insensitive():
    assert m("device.name=tesla v100-pcie-16gb")
    assert m("device.name=TESLA V100-PCIE-16GB")
    assert not m("device.name=V100")  # = is not "contains"
    assert not m("device.name=Tesla V100-PCIE-16GB-extra")


def test_not_equals_is_the_negation_of_equals():
    assert m("device.vendor!=AMD")
    assert not m("device.vendor!=nvidia corporation")


def test_tilde_is_contains_and_case_insensitive():
    assert m("device.name~v100")
    assert m("device.name~PCIE-16")
    assert m("device.vendor~NVIDIA")
    assert not m("device.name~A100")
    assert not m("device.name~v100", POCL)


def test_name_and_model_are_the_same_attribute():
    for key in ("device.name", "device.model"):
        assert m(f"{key}=cpu-x86-64", POCL)
        assert not m(f"{key}=cpu-x86-64", V100)


def test_each_device_key_reads_its_own_attribute():
    assert m("device.id=NVML:0000:3b:00.0")
    assert not m("device.id=opencl:0:0")
    assert m("device.backend=nvml") and m("device.backend=opencl", POCL)
    assert not m("device.backend=opencl")
    assert m("device.vendor=pocl", POCL)
    assert m("device.pci=0000:3B:00.0")
    assert m("device.pci~3b:00")


def test_a_device_without_a_pci_address_only_matches_not_equals():
    assert POCL.pci_address is None
    assert not m("device.pci=0000:3b:00.0", POCL)
    assert not m("device.pci~0", POCL)
    assert m("device.pci!=0000:3b:00.0", POCL)


def test_server_keys_read_the_server_that_holds_the_device():
    assert m("server.name=app1") and m("server.name=APP1")
    assert not m("server.name=app2")
    assert m("server.hostname~LAB.example")
    assert not m("server.hostname=app1")
    other = ServerInfo(name="app2", hostname="app2.lab.example", version="0.1.0")
    assert not m("server.name=app1", server=other)
    assert m("server.name=app1", POCL)  # the same for every device of the server


# --- matching: device.memory in MiB ---------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("device.memory=16384", True),
        ("device.memory=16384.0", True),
        ("device.memory!=16384", False),
        ("device.memory!=16000", True),
        ("device.memory>=16384", True),
        ("device.memory>=16000", True),  # would be false if the unit were GiB or bytes
        ("device.memory>16384", False),
        ("device.memory>16383.5", True),
        ("device.memory<=16384", True),
        ("device.memory<16384", False),
        ("device.memory<16385", True),
        ("device.memory>=17179869184", False),  # the size in bytes: the unit is not bytes
        ("device.memory<=16", False),  # the size in GiB: the unit is not GiB
    ],
)
def test_memory_compares_as_a_number_of_mib(text, expected):
    assert m(text) is expected


def test_memory_compares_numerically_not_as_text():
    assert m("device.memory>9000")  # as text "16384" < "9000"
    assert m("device.memory<10000", POCL)  # as text "4096" > "10000"


def test_memory_contains_matches_the_digits_of_the_mib_count():
    assert m("device.memory~16384")
    assert m("device.memory~163")
    assert m("device.memory~384")
    assert not m("device.memory~999")
    odd = Device(id="x", backend="opencl", vendor="v", model="m", memory_bytes=1536 * MIB + MIB // 2)
    assert m("device.memory~1536.5", odd)


# --- several filters --------------------------------------------------------------------


def test_all_filters_must_match():
    filters = [parse_filter("device.vendor~nvidia"), parse_filter("device.memory>=16000")]
    assert matches_all(filters, V100, SERVER)
    assert not matches_all(filters, POCL, SERVER)
    assert not matches_all(filters + [parse_filter("server.name=other")], V100, SERVER)
    assert matches_all([], POCL, SERVER)


def test_describe_joins_filters_as_typed():
    filters = [parse_filter("device.name ~ V100"), parse_filter("device.memory>=16000")]
    assert describe(filters) == "device.name~V100 and device.memory>=16000"
    assert describe([]) == ""
