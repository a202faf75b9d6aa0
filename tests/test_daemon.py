"""radiumd as a real process on loopback: keys, malformed input, metrics, shutdown."""

from __future__ import annotations

import asyncio
import os
import stat
import urllib.request

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Client

from radium.remoting import schema as s
from radium.remoting import wire as wire
from radium.remoting._config import ApplianceEntry, load_client_config, save_client_config
from radium.remoting._errors import ApplianceShutdown, AuthError
from radium.remoting._keys import KeyPair
from radium.remoting.client.connection import Connection
from radium.remoting.client.session import Session

pytestmark = pytest.mark.timeout(180)


def stranger(client: Client, tmp_path) -> Client:
    """A client whose key the appliance has never seen."""
    config = load_client_config(client.config)
    pair = KeyPair.generate()
    config.client.public_key, config.client.secret_key = pair.public, pair.secret
    path = tmp_path / "stranger.toml"
    save_client_config(config, path)
    return Client(path, tmp_path / "stranger-state")


def test_a_key_enrolled_after_start_works_without_restart(appliance, client):
    assert appliance.proc.poll() is None
    data = client.json("list-gpus")
    assert len(data["devices"]) == 2


def test_an_unknown_key_is_refused_and_logged(appliance, client, tmp_path):
    out = stranger(client, tmp_path).run("list-gpus", "--json")
    assert out.returncode == 77
    assert "refused this client's key" in out.stdout
    assert "Traceback" not in out.stderr
    entry = appliance.wait_for_log("refused unknown client key")
    assert entry["key"] == load_client_config(tmp_path / "stranger.toml").client.public_key


def test_a_wrong_appliance_key_is_reported_as_such(appliance, client, tmp_path):
    config = load_client_config(client.config)
    config.appliances[0].public_key = KeyPair.generate().public
    path = tmp_path / "wrong.toml"
    save_client_config(config, path)
    out = Client(path, tmp_path / "s").run("list-gpus")
    assert out.returncode == 77
    assert "public key in your configuration is not the one it has" in out.stderr


def test_a_revoked_key_stops_working_without_restart(appliance, client):
    config = load_client_config(client.config)

    async def scenario() -> None:
        async with Connection(config.appliances[0], config.keys) as conn:
            await conn.request(s.ListDevices())  # works while enrolled
            revoked = await asyncio.to_thread(
                client_run_admin, "revoke", "vm1", "--appliance", str(appliance.config)
            )
            assert revoked.returncode == 0, revoked.stderr
            # The connection is still open, but the next message is refused.
            with pytest.raises(AuthError, match="no longer authorised"):
                await conn.request(s.ListDevices())

    asyncio.run(scenario())
    out = client.run("list-gpus")  # and a new connection is refused at the handshake
    assert out.returncode == 77 and "refused this client's key" in out.stderr
    appliance.wait_for_log("message from revoked key refused")


def client_run_admin(*args: str):
    import subprocess

    from support import BIN

    return subprocess.run([str(BIN / "radium-admin"), *args], capture_output=True, text=True, timeout=30)


# --- malformed input ------------------------------------------------------------


class RawPeer:
    """A correctly keyed DEALER that sends whatever frames a test wants."""

    def __init__(self, client: Client) -> None:
        config = load_client_config(client.config)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.curve_serverkey = config.appliances[0].public_key.encode()
        self.sock.curve_publickey = config.client.public_key.encode()
        self.sock.curve_secretkey = config.client.secret_key.encode()
        self.sock.linger = 0
        self.sock.connect(config.appliances[0].address)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def reply(self, timeout: float = 5.0) -> tuple[wire.Header, s.Message]:
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        header, body, *_ = self.sock.recv_multipart()
        return wire.decode_header(header), wire.decode_body(body, s.AnyMessage)

    def drain(self) -> None:
        while self.sock.poll(0):
            self.sock.recv_multipart()

    def alive(self) -> bool:
        """The daemon still answers a well-formed request."""
        self.drain()
        self.send(wire.encode(s.ListDevices(), 999_999))
        while True:
            header, body = self.reply()
            if header.id == 999_999:
                return isinstance(body, s.DeviceList)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def raw(client):
    peer = RawPeer(client)
    yield peer
    peer.close()


def header(msg_id: int, protocol: int = s.PROTOCOL_VERSION) -> bytes:
    return msgspec.msgpack.encode(["radium", protocol, msg_id])


def test_malformed_frames_are_dropped_and_the_daemon_keeps_serving(appliance, raw):
    raw.send([b"just one frame"])
    raw.send([b"\xc1not msgpack", b"body"])
    raw.send([b"\x93\xa1\x84\x01\x01", b"x"])  # a header whose string is not UTF-8
    raw.send([msgspec.msgpack.encode(["other", 1, 5]), b"x"])
    assert raw.alive()
    # The last of the four, logged before the reply to alive(): all three are in.
    appliance.wait_for_log(
        "malformed frame dropped", where=lambda e: e.get("error") == "not a radium message"
    )
    malformed = [e for e in appliance.lines if e.get("event") == "malformed frame dropped"]
    assert len(malformed) == 4


@pytest.mark.parametrize(
    "body, code, text",
    [
        (b"\xc1", "protocol", "malformed message"),
        (msgspec.msgpack.encode({"kind": "no-such-kind"}), "protocol", "malformed message"),
        (b"\x81\xa4kind\xa1\x84", "protocol", "malformed message"),  # not UTF-8
        (msgspec.msgpack.encode({"kind": "acquire", "session": 5}), "protocol", "malformed message"),
        (
            msgspec.msgpack.encode({"kind": "list-devices", "x": "y" * (2 << 20)}),
            "message-too-large",
            "over the limit",
        ),
    ],
    # Named, not shown: a 2 MiB id would reach every child's environment (PYTEST_CURRENT_TEST).
    ids=["not-msgpack", "unknown-kind", "not-utf8", "wrong-type", "too-large"],
)
def test_malformed_messages_get_a_typed_error(appliance, raw, body, code, text):
    raw.send([header(7), body])
    hdr, reply = raw.reply()
    assert hdr.id == 7
    assert isinstance(reply, s.Error) and reply.code == code and text in reply.message
    assert raw.alive()


def test_a_wrong_protocol_version_gets_a_typed_error(appliance, raw):
    raw.send([header(3, protocol=99), msgspec.msgpack.encode(s.ListDevices())])
    hdr, reply = raw.reply()
    assert isinstance(reply, s.Error) and reply.code == "protocol"
    assert "speaks protocol 99" in reply.message and reply.detail["server_protocol"] == s.PROTOCOL_VERSION
    raw.send(wire.encode(s.Hello(protocol=s.PROTOCOL_VERSION + 1, client_version="x"), 4))
    hdr, reply = raw.reply()
    assert isinstance(reply, s.Error) and "upgrade the older side" in reply.message
    assert raw.alive()


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_kinds = st.sampled_from(
    ["hello", "heartbeat", "bye", "list-devices", "acquire", "release", "check-health", "enroll", "revoke"]
)
_shaped = st.builds(
    lambda kind, fields: {**fields, "kind": kind}, _kinds, st.dictionaries(st.text(max_size=12), _values)
)
_requests = st.builds(
    lambda c, p, m, t: {
        "kind": "acquire",
        "session": "nope",
        "request": {"count": c, "fraction": p, "memory_mib": m},
        "timeout": t,
    },
    st.integers(-5, 5),
    st.none() | st.floats(),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
)
_messages = st.one_of(
    st.lists(st.binary(max_size=40), min_size=1, max_size=4).map(lambda fs: ("raw", fs)),
    _values.map(lambda v: ("body", msgspec.msgpack.encode(v))),
    _shaped.map(lambda v: ("body", msgspec.msgpack.encode(v))),
    _requests.map(lambda v: ("body", msgspec.msgpack.encode(v))),
)


def test_thousands_of_random_messages_leave_the_daemon_healthy(appliance, client, raw):
    replies = {"typed": 0}

    @settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_messages)
    def fuzz(message):
        kind, payload = message
        if kind == "raw":
            raw.send(payload)
            return
        raw.send([header(11), payload])
        hdr, reply = raw.reply()  # a well-framed message is always answered
        assert hdr.id == 11
        if isinstance(reply, s.Error):
            replies["typed"] += 1

    fuzz()
    assert appliance.proc.poll() is None
    assert raw.alive()
    assert replies["typed"] > 1000
    health = client.json("health")
    assert health["healthy"] is True
    failures = [e for e in appliance.lines if e.get("event") in ("dispatch failed", "handler failed")]
    assert not failures, [f.get("exception", f)[-600:] for f in failures[:3]]


# --- metrics, shutdown, files -------------------------------------------------------


def test_metrics_endpoint(appliance, client):
    client.json("list-gpus")
    with urllib.request.urlopen(f"http://127.0.0.1:{appliance.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'radium_devices{health="ok"} 2.0' in text
    assert "radium_leases 0.0" in text
    assert "radium_queue_length 0.0" in text
    received = [ln for ln in text.splitlines() if ln.startswith("radium_bytes_received_total")]
    assert received and float(received[0].split()[-1]) > 0
    assert 'radium_requests_total{kind="ListDevices",outcome="ok"}' in text


def test_sigterm_drops_leases_and_tells_clients(appliance, client):
    config = load_client_config(client.config)

    async def scenario() -> None:
        conn = await Connection(config.appliances[0], config.keys).open()
        session = await Session(conn).open()
        await session.acquire(s.AllocationRequest(count=1, fraction=0.5))
        appliance.proc.terminate()
        await asyncio.wait_for(_until_failed(conn), 10)
        await conn.close()

    asyncio.run(scenario())
    assert appliance.proc.wait(15) == 0
    stopping = appliance.wait_for_log("radiumd stopping")
    assert stopping["leases"] == 1
    appliance.wait_for_log("radiumd stopped")


async def _until_failed(conn: Connection) -> None:
    while True:
        try:
            await conn.request(s.ListDevices(), timeout=1)
        except ApplianceShutdown:
            return
        await asyncio.sleep(0.05)


def test_the_server_secret_key_is_private(appliance):
    secret = appliance.dir / "state" / "server.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    bundle = appliance.enroll("vm9")
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600


def test_health_is_non_zero_when_an_appliance_is_unreachable(appliance, client, tmp_path):
    config = load_client_config(client.config)
    config.appliances.append(
        ApplianceEntry(name="gone", address="tcp://127.0.0.1:1", public_key=config.appliances[0].public_key)
    )
    path = tmp_path / "two.toml"
    save_client_config(config, path)
    out = Client(path, tmp_path / "s").run("health", "--json")
    assert out.returncode == 1
    report = msgspec.json.decode(out.stdout)
    by_name = {a["appliance"]: a for a in report["appliances"]}
    assert by_name["app1"]["healthy"] is True and by_name["app1"]["key_trusted"] is True
    assert by_name["gone"]["healthy"] is False and by_name["gone"]["reachable"] is False
    assert "cannot reach" in by_name["gone"]["error"]
