"""The direct file channel (remoting/run/direct.py): its handshake and records, then runs over it.

First its two ends on loopback (real TCP sockets): the key proven both ways, a wrong key
or a stranger refused while the right client still gets in, an altered record refused, a
replayed handshake useless.  Then `radium run` over the two-host topology: content comes
over the channel; the channel cut mid-transfer, the run goes on through radiumd with the
same bytes; the supervisor killed mid-transfer, the run ends cleanly; `run.direct = false`
keeps everything relayed.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from support import hidden, wait_until
from test_run_faults import PROJECT, _supervisors, assert_nothing_left, project_setup, start_remote

from radium.remoting.run import direct
from radium.remoting.run.cas import _page_aligned

pytestmark = pytest.mark.timeout(120)


class Server:
    """An Offer accepting in a thread, as the supervisor does."""

    def __init__(self, wait: float = 10.0) -> None:
        self.offer = direct.Offer("127.0.0.1")
        self.link: direct.Link | None = None
        self.thread = threading.Thread(target=self._accept, args=(wait,))
        self.thread.start()

    def _accept(self, wait: float) -> None:
        self.link = self.offer.accept(wait)

    def result(self) -> direct.Link | None:
        self.thread.join(15)
        assert not self.thread.is_alive()
        return self.link


def test_the_two_ends_prove_the_key_and_carry_messages_whole():
    server = Server()
    client = direct.connect("127.0.0.1", server.offer.port, server.offer.key)
    sup = server.result()
    assert sup is not None
    chunks = [os.urandom(1 << 20) for _ in range(5)]
    sup.send(7, [b"request"])
    assert client.receive() == (7, [b"request"])
    # 5 MiB: more than the sockets buffer, so sent from a thread while this one receives.
    sending = threading.Thread(target=client.send, args=(7, [b"reply", *chunks, b""]))
    sending.start()
    call_id, frames = sup.receive()
    sending.join()
    assert call_id == 7 and frames == [b"reply", *chunks, b""]
    # Each chunk opened into a page-aligned buffer of its own: the store writes it from there.
    assert [_page_aligned(f) for f in frames[1:-1]] == [True] * 5
    # The key opened one connection: the listener is closed.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.offer.port), timeout=5)
    client.close()
    with pytest.raises(direct.DirectError):
        sup.receive()
    sup.close()


def _os_name(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().rstrip("\n")


def test_radiums_threads_carry_their_names_for_the_os(tmp_path):
    """`top -H`, perf and the run benchmark's CPU by thread tell the threads of a cold read apart
    by the name /proc gives each (Python 3.11 keeps its own to itself): the channel's sending
    thread, the client's pool that hashes big files (cut to the kernel's 15 bytes)."""
    from radium.remoting.run.files import PARALLEL_HASH_MIN, FileServer
    from radium.remoting.run.fsproto import Lookup

    server = Server()
    client = direct.connect("127.0.0.1", server.offer.port, server.offer.key)
    sup = server.result()
    assert sup is not None
    sender = direct.Sender(client, lambda why: None)
    # The thread names itself as it starts (it sends only what the socket did not take at once).
    wait_until(lambda: _os_name(sender.thread) == "radium-direct-s", 10, "the sending thread named")
    assert sender.thread.name == "radium-direct-send"  # Python's own name as it was
    sender.stop()
    sender.thread.join(10)
    client.close()
    sup.close()

    (tmp_path / "lib.so").write_bytes(os.urandom(PARALLEL_HASH_MIN))
    files = FileServer(tmp_path)
    files.handle(Lookup(path=b"/lib.so", content=True))
    assert files._hashers is not None
    workers = list(files._hashers._threads)
    assert workers and sorted(_os_name(t) for t in workers) == sorted(t.name for t in workers)
    assert all(t.name.startswith("radium-hash_") for t in workers)
    files.close()


def test_messages_go_straight_while_the_socket_takes_them_then_in_order_by_the_thread():
    """`Sender` sends from the caller's thread (trio's loop: a handoff to its thread cost ~150 µs
    a request) as far as the socket takes a message, and its thread sends the rest and what
    follows, in order: the caller never waits for a peer that reads nothing."""
    server = Server()
    client = direct.connect("127.0.0.1", server.offer.port, server.offer.key)
    sup = server.result()
    assert sup is not None
    lost: list[str] = []
    sender = direct.Sender(sup, lost.append)  # the supervisor's end, as FileAsks uses it
    sealed_by: list[int] = []  # the thread that sealed (and sent) each message
    seal = sup._seal_all
    sup._seal_all = lambda frames: sealed_by.append(threading.get_ident()) or seal(frames)  # type: ignore[method-assign]
    # 24 MiB: far more than both sockets' buffers hold while nobody reads.
    messages = [(i, [os.urandom(1 + (i * 7919) % 500_000)]) for i in range(1, 101)]
    sending = threading.Thread(target=lambda: [sender.send(i, frames) for i, frames in messages], daemon=True)
    sending.start()
    sending.join(10)
    assert not sending.is_alive()  # all handed over, although the peer has read nothing yet
    assert [client.receive() for _ in messages] == messages  # whole and in order
    assert sealed_by[0] == sending.ident  # the first went straight from the caller's thread
    assert sender.thread.ident in sealed_by  # those after the socket filled, by the thread
    sender.send(101, [b"after"])  # the backlog gone: straight out again
    assert client.receive() == (101, [b"after"]) and sealed_by[-1] == threading.get_ident()
    assert lost == []
    sender.stop()
    sender.thread.join(10)
    client.close()
    sup.close()


def test_the_client_end_answers_requests_side_by_side_each_in_the_thread_that_read_it():
    """`serve` (the client's end): the thread holding the turn reads a request, hands the turn
    on (starting another thread when none waits for it) and answers it itself, so a slow
    request (a big file hashed) holds up no other; the threads end when the channel closes."""
    server = Server()
    client = direct.connect("127.0.0.1", server.offer.port, server.offer.key)
    sup = server.result()
    assert sup is not None
    release = threading.Event()
    answered_by: dict[bytes, int] = {}

    def answer(body: bytes | memoryview) -> list[bytes]:
        answered_by[bytes(body)] = threading.get_ident()
        if body == b"slow":
            assert release.wait(10)
        return [b"answer to " + bytes(body)]

    serving = threading.Thread(target=direct.serve, args=(client, answer, 3, "radium-answer"), daemon=True)
    serving.start()
    sup.send(1, [b"slow"])
    wait_until(lambda: b"slow" in answered_by, 10, "the slow request taken")
    sup.send(2, [b"quick"])
    assert sup.receive() == (2, [b"answer to quick"])  # not behind the slow one
    release.set()
    assert sup.receive() == (1, [b"answer to slow"])
    assert answered_by[b"slow"] != answered_by[b"quick"]
    helpers = [t for t in threading.enumerate() if t.name.startswith("radium-answer_")]
    assert len(helpers) == 2
    names = {"radium-answer_1", "radium-answer_2"}  # each names itself as it starts
    wait_until(lambda: {_os_name(t) for t in helpers} == names, 10, "the answering threads named")
    sup.close()  # the supervisor's end goes: every answering thread ends, the caller's too
    serving.join(10)
    for t in helpers:
        t.join(10)
    assert not serving.is_alive() and not any(t.is_alive() for t in helpers)
    assert client.closed


def test_a_wrong_key_or_a_stranger_is_refused_and_the_client_still_gets_in():
    server = Server()
    port = server.offer.port
    with pytest.raises(direct.DirectError):
        direct.connect("127.0.0.1", port, os.urandom(direct.KEY_BYTES))
    stranger = socket.create_connection(("127.0.0.1", port))
    stranger.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert stranger.recv(100) == b""  # closed on it
    stranger.close()
    client = direct.connect("127.0.0.1", port, server.offer.key)
    sup = server.result()
    assert sup is not None
    client.send(1, [b"after the strangers"])
    assert sup.receive() == (1, [b"after the strangers"])
    client.close()
    sup.close()


def test_nobody_comes_and_the_offer_ends():
    server = Server(wait=0.3)
    assert server.result() is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.offer.port), timeout=5)


def _raw_pair(server: Server) -> tuple[socket.socket, direct.Link, bytes]:
    """A client socket that did the handshake by hand (so that the test can write raw bytes),
    and every byte it sent for it."""
    key = server.offer.key
    sock = socket.create_connection(("127.0.0.1", server.offer.port))
    hello = direct.MAGIC + os.urandom(direct.NONCE_BYTES)
    sock.sendall(hello)
    ns = sock.recv(direct.NONCE_BYTES, socket.MSG_WAITALL)
    k_cs, k_sc = direct._keys(key, hello[len(direct.MAGIC) :], ns)
    link = direct.Link(sock, k_cs, k_sc)
    proof = bytes(link._seal_all([b"client"]))
    sock.sendall(proof)
    assert link.receive_record() == b"supervisor"
    return sock, link, hello + proof


def test_an_altered_or_replayed_record_does_not_open():
    server = Server()
    sock, link, sent = _raw_pair(server)
    sup = server.result()
    assert sup is not None
    # A record sealed for this connection, altered on the way: refused.
    altered = bytearray(link._seal_all([b"\0" * 12 + b"x"]))
    altered[-1] ^= 1
    sock.sendall(altered)
    with pytest.raises(direct.DirectError, match="did not open"):
        sup.receive()
    # A big one too (opened into a buffer of its own).
    big = bytearray(link._seal_all([b"\0" * 12 + os.urandom(direct.BIG_RECORD)]))
    big[4 + direct.BIG_RECORD // 2] ^= 1
    sock.sendall(big)
    with pytest.raises(direct.DirectError, match="did not open"):
        sup.receive()
    sup.close()
    sock.close()
    # The handshake recorded and played again, byte for byte, to a new offer of the same key:
    # the supervisor's fresh nonce makes the recorded proof fail.
    server2 = Server(wait=1.0)
    server2.offer.key = server.offer.key
    sock2 = socket.create_connection(("127.0.0.1", server2.offer.port))
    sock2.sendall(sent)
    assert server2.result() is None
    sock2.close()


# --- radium run over it ----------------------------------------------------------------------

READER = """\
import hashlib, sys
path = sys.argv[1]
h = hashlib.sha256()
with open(path, "rb", buffering=0) as f:
    h.update(f.read(1 << 20))
    print("reading", flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.readline()
    while block := f.read(1 << 20):
        h.update(block)
print(h.hexdigest(), flush=True)
"""


def _reader_project(tmp_path, mib: int) -> tuple[dict[str, str | bytes], str]:
    data = os.urandom(mib << 20)
    return {"read.py": READER, "data.bin": data}, hashlib.sha256(data).hexdigest()


def _start(remote, tmp_path, files, *args: str) -> subprocess.Popen:
    client = remote.client()
    argv = hidden(client, project_setup(tmp_path, files), PROJECT, "run", "--stats", "--", *args)
    return subprocess.Popen(
        argv, env=client.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _requests(stderr: bytes) -> tuple[int, int]:
    m = re.search(rb"file requests (\d+) \((\d+) direct\)", stderr)
    assert m, stderr.decode()
    return int(m[1]), int(m[2])


def _supervisor_ports(remote) -> list[str]:
    """The appliance's listening TCP ports other than radiumd's and its metrics': direct channels on offer."""
    out = remote.hosts.appliance.run(["ss", "-tlnH"], capture_output=True, text=True).stdout
    ports = [line.split()[3].rsplit(":", 1)[1] for line in out.splitlines()]
    return [p for p in ports if p not in (str(remote.appliance.port), str(remote.appliance.metrics_port))]


def _read_through(remote, tmp_path, mib: int) -> tuple[int, int, dict[str, float]]:
    """A run reading a file of `mib` MiB whole: (file requests, of them direct, where the direct
    channel's time went); its bytes checked."""
    files, digest = _reader_project(tmp_path, mib)
    proc = _start(remote, tmp_path, files, "python3", "read.py", "data.bin", "go")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.split() == [b"reading", digest.encode()]
    content = re.search(rb"time in file content on the appliance: (.*?); answering", err)
    assert content, err.decode()
    link = {k.decode(): float(v) for k, v in re.findall(rb"(link_\w+) ([\d.]+) s", content[1])}
    return (*_requests(err), link)


def test_content_comes_over_the_direct_channel(remote, tmp_path):
    total, directly, link = _read_through(remote, tmp_path, 24)
    # All but the first few round trips (the prefetch and what came before the client had
    # connected: how many depends on the machine's load) came directly.
    assert directly >= 3 and total - directly <= max(3, total // 10), (total, directly)
    # --stats says where the channel's time went: 24 MiB of replies took time to receive, and
    # a reader fetching content leaves the channel idle with content asked for at times.
    assert set(link) == set(direct_link_keys()), link
    assert link["link_receiving"] > 0 and link["link_idle_content_asked"] > 0, link
    assert _supervisor_ports(remote) == []  # nothing left listening


def test_the_channel_cut_mid_transfer_and_the_run_goes_on_through_radiumd(remote, tmp_path):
    files, digest = _reader_project(tmp_path, 48)
    proc = _start(remote, tmp_path, files, "python3", "read.py", "data.bin", "wait")
    try:
        assert proc.stdout.readline() == b"reading\n", proc.stderr.read1()
        # The first read started the read-ahead: cut the channel under it, from the
        # appliance's side (the supervisor's sockets other than its listener: none is left).
        app = remote.hosts.appliance
        cut = app.run(
            ["ss", "-K", "-tnH", "state", "established", "sport", "!=", f":{remote.appliance.port}"],
            capture_output=True,
            text=True,
        )
        assert cut.returncode == 0, cut.stderr
        remote.appliance.wait_for_log("direct file channel lost: going on through radiumd", timeout=10)
        out, err = proc.communicate(b"go on\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert out.split() == [digest.encode()]  # the same bytes, not one lost or doubled
    total, directly = _requests(err)
    assert directly >= 1 and total > directly, (total, directly)  # some each way


def test_the_supervisor_killed_mid_transfer_ends_the_run_cleanly(remote, tmp_path):
    marker = "radium-direct-kill-" + os.urandom(4).hex()
    files, _ = _reader_project(tmp_path, 48)
    proc = _start(remote, tmp_path, files, "python3", "read.py", "data.bin", "wait", marker)
    try:
        assert proc.stdout.readline() == b"reading\n", proc.stderr.read1()
        pid = remote.appliance.proc.pid
        sups = wait_until(lambda: [p for p in _supervisors(pid) if _has_child(p)], 10, "the run's supervisor")
        os.kill(sups[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 255 and b"supervisor ended unexpectedly" in err, err.decode()
    assert b"Traceback" not in err
    # The fork server removes the run's folder (its supervisor could not): it may take a moment.
    runs = remote.appliance.dir / "state" / "runs"
    wait_until(lambda: not list(runs.iterdir()), 10, "the run's folder removed")
    assert_nothing_left(remote, marker)


def _has_child(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return False


@pytest.fixture
def relayed_remote(two_hosts, tmp_path):
    r = start_remote(two_hosts, tmp_path, "[run]\ndirect = false\n")
    try:
        yield r
    finally:
        r.close()


def test_with_the_channel_off_everything_is_relayed(relayed_remote, tmp_path):
    total, directly, link = _read_through(relayed_remote, tmp_path, 8)
    assert total > 0 and directly == 0
    assert link == {}  # no channel, no figures of it


def test_a_folder_read_in_turn_comes_whole_through_radiumd(relayed_remote, tmp_path):
    """A walk's next files are looked up with their first chunks (`Lookup.head`): replies of
    several frames, relayed by radiumd as the chunks are. The files after the first two come
    whole with their lookups: none of their chunks is asked for, so fewer chunk requests are
    made than there are files (each needs one at least otherwise)."""
    # The interpreter and its hashlib first, so that the walk's run asks for the walk's files only.
    warm = _start(relayed_remote, tmp_path, {}, "python3", "-c", "import hashlib, os")
    assert warm.wait(timeout=60) == 0, warm.stderr.read().decode()
    count = 12
    files: dict[str, str | bytes] = {f"walk/f{i:02}": os.urandom((3 << 20) + i) for i in range(count)}
    digest = hashlib.sha256(b"".join(files[f"walk/f{i:02}"] for i in range(count))).hexdigest()
    files["walk.py"] = (
        "import hashlib, os\nh = hashlib.sha256()\n"
        "for name in sorted(os.listdir('walk')):\n    h.update(open('walk/' + name, 'rb').read())\n"
        "print(h.hexdigest())\n"
    )
    proc = _start(relayed_remote, tmp_path, files, "python3", "walk.py")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == [digest]
    total, directly = _requests(err)
    assert total > 0 and directly == 0
    app = relayed_remote.appliance

    def runs_requests() -> list[dict]:
        return [e["by_kind"] for e in app.lines if e.get("event") == "file requests"]

    wait_until(lambda: len(runs_requests()) == 2, 15, "the walk's run to log its file requests")
    walk = runs_requests()[1]
    assert walk.get("ReadChunks", 0) < count, walk  # 14 when the next files' heads are asked apart


def direct_link_keys() -> tuple[str, ...]:
    from radium.remoting.run.fsasks import LinkTimes

    return LinkTimes.KEYS


def test_link_times_sum_each_moment_by_what_was_asked_and_stop_at_the_last_reply():
    """LinkTimes, driven by a clock of our own: every moment between the first request and the
    last reply goes to exactly one sum, by what was out at the time."""
    from radium.remoting.run.fsasks import LinkTimes

    now = [10.0]
    times = LinkTimes(clock=lambda: now[0])

    def at(t: float) -> None:
        now[0] = t

    times.asked("background")  # the tree's prefetch: not waited for, not the start
    at(11.0), times.asked("metadata")  # a lookup
    at(11.5), times.receiving()
    at(11.6), times.received("metadata")
    at(12.0), times.asked("content"), times.asked("content")  # two reads, 0.4 s of nothing asked before
    at(12.3), times.receiving()
    at(12.5), times.received("content")
    at(12.6), times.asked("metadata")  # content and a lookup out: counts as content asked
    at(12.9), times.receiving()
    at(13.0), times.received("content")
    at(13.1), times.receiving()
    at(13.2), times.received("metadata")
    at(13.4), times.receiving()
    at(13.5), times.received(None)  # a late answer nobody waits for: still the last reply
    at(20.0), times.asked("content")  # after the last reply: not in the totals
    assert times.totals() == pytest.approx(
        {
            "link_receiving": 0.1 + 0.2 + 0.1 + 0.1 + 0.1,
            "link_idle_metadata_asked": 0.5 + 0.1,
            "link_idle_content_asked": 0.3 + 0.1 + 0.3,
            "link_idle_nothing_asked": 0.4 + 0.2,
        }
    )
    times.stop()  # the channel lost: its requests go through radiumd, the sums stay as they are
    at(21.0), times.receiving(), times.received("content")
    assert times.totals()["link_receiving"] == pytest.approx(0.6)
    assert LinkTimes().totals() == {}  # nothing came


@pytest.mark.parametrize(
    ("listen", "host"),
    [("tcp://0.0.0.0:7950", "0.0.0.0"), ("tcp://*:7950", "0.0.0.0"), ("tcp://10.1.2.3:1", "10.1.2.3"),
     ("tcp://[::]:7950", "::"), ("tcp://[fd00::5]:7950", "fd00::5")],
)  # fmt: skip
def test_the_channel_listens_where_radiumd_does(listen, host):
    from radium.remoting.daemon.runs import listen_host

    assert listen_host(listen) == host
