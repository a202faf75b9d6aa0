"""The warm tree (remoting/run/warmtree.py): what a client's runs read, kept on the appliance
as real files under the next runs' overlay — served by the kernel, never stale.

Each test runs several `radium run`s in one private mount namespace on the client (one
tmpfs project, changed between runs as a person would), and checks what each run saw, the
FUSE operations it cost, and what the appliance's warm tree holds on disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
from support import BIN, WAIT_FOR_COMPLETION
from test_run import PROJECT, project_setup
from test_run_faults import start_remote

from radium.remoting.run import warmtree
from radium.remoting.run.cas import ContentStore
from radium.remoting.run.fscontent import Contents
from radium.remoting.run.fsfill import FILL_FILE_MAX
from radium.remoting.run.fsnodes import NodeTable, TreeStats
from radium.remoting.run.fsproto import CHUNK_SIZE, Attr, DirEntry, DirListing, chunk_hash
from radium.remoting.run.warmtree import WarmTree, _Index

pytestmark = pytest.mark.timeout(240)

STATS = re.compile(rb"FUSE operations (\d+), warm tree files (\d+)")


def session(remote, tmp_path, files: dict[str, str | bytes], steps: list[str], client_name: str = "vm1"):
    """Run `steps` (bash; `radium` is the client) one after another in one private mount
    namespace holding the project; each step's stdout and stderr, split at markers.

    Returns once every run's supervisor has ended: a run's end adds to the warm tree after
    the client has its exit status."""
    client = remote.client(client_name)
    radium = shlex.quote(str(BIN / "radium"))
    body = "".join(f"echo '@@step {i}'; echo '@@step {i}' >&2\n{step}\n" for i, step in enumerate(steps))
    script = f"set -e\n{project_setup(tmp_path, files)}\ncd {PROJECT}\n"
    script += f'radium() {{ {radium} "$@"; }}\n{body}'
    argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]
    out = subprocess.run(client.host.command(argv), env=client.env(), capture_output=True, timeout=200)
    assert out.returncode == 0, out.stderr.decode()[-4000:]
    remote.runs_started = getattr(remote, "runs_started", 0) + sum(step.count("radium run") for step in steps)
    ended: set[str] = set()
    while len(ended) < remote.runs_started:
        entry = remote.appliance.wait_for_log("run ended", where=lambda e: e.get("run") not in ended)
        ended.add(entry["run"])
    split = lambda text: re.split(rb"@@step \d+\n", text)[1:]  # noqa: E731
    return list(zip(split(out.stdout), split(out.stderr), strict=True))


def fuse_and_warm(stderr: bytes) -> tuple[int, int]:
    m = STATS.search(stderr)
    assert m, stderr.decode()
    return int(m[1]), int(m[2])


def warm_index(remote, client_name: str = "vm1") -> tuple[Path, _Index]:
    """The client's warm tree on the appliance: its folder and index."""
    folders = list((remote.appliance.dir / "state" / "warm").iterdir())
    assert len(folders) == 1, folders
    folder = folders[0]
    return folder / "tree", msgspec.msgpack.decode((folder / "index").read_bytes(), type=_Index)


READ_ALL = (
    "import hashlib, os, sys\n"
    "h = hashlib.sha256()\n"
    "for top, dirs, files in os.walk('pkg'):\n"
    "    dirs.sort()\n"
    "    for name in sorted(files):\n"
    "        p = os.path.join(top, name)\n"
    "        st = os.stat(p)\n"
    "        h.update(p.encode() + oct(st.st_mode).encode() + str(int(st.st_mtime)).encode())\n"
    "        h.update(open(p, 'rb').read())\n"
    "print(h.hexdigest())\n"
)


def test_a_second_run_reads_the_warm_tree_and_sees_the_same(remote, tmp_path):
    files = {f"pkg/sub{d}/m{i:02d}.py": os.urandom(200 + 50 * i) for d in range(3) for i in range(20)}
    files["pkg/big.bin"] = os.urandom(3 << 20)
    files["read.py"] = READ_ALL
    steps = session(
        remote,
        tmp_path,
        files,
        [
            "radium run --stats -- python3 read.py",
            "radium run --stats -- python3 read.py",
            "python3 read.py",
        ],
    )
    (first_out, first_err), (second_out, second_err), (local_out, _) = steps
    assert first_out == second_out == local_out
    first_ops, first_warm = fuse_and_warm(first_err)
    second_ops, second_warm = fuse_and_warm(second_err)
    assert first_warm == 0
    assert second_warm >= 62, second_err.decode()  # the 61 files of pkg and read.py, and python3's
    assert second_ops < first_ops / 3, (first_ops, second_ops)
    tree, index = warm_index(remote)
    sub = tree / PROJECT.lstrip("/") / "pkg" / "sub1"
    assert (sub / "m05.py").read_bytes() == files["pkg/sub1/m05.py"]
    assert os.getxattr(sub, "trusted.overlay.opaque") == b"y"  # every entry is there: FUSE is not asked
    assert index.size >= 3 << 20
    # The second run's new overlay looked up the complete folders' files beside the process's
    # start (World._look_up): pkg/sub0-2's 60 files, found through it; the first had no tree.
    ahead = [e for e in remote.appliance.lines if e.get("event") == "warm files looked up ahead"]
    assert len(ahead) == 1 and ahead[0]["files"] >= 60, ahead


def test_the_tree_answers_whether_it_holds_a_command_within_the_clients_tree_only(tmp_path):
    """The supervisor asks it before the process starts (is the program on PATH?): a file the
    tree holds, its symlinks followed within the client's tree, never the appliance's own."""
    warm = WarmTree(tmp_path / "warm", 1 << 20)
    root = warm.files
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_bytes(b"\x7fELF")
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "bin").symlink_to("usr/bin")
    (root / "abs").symlink_to("/usr/bin/python3")
    (root / "etc").symlink_to("/etc")  # the client's /etc: the tree holds none of it
    (root / "loop").symlink_to("loop")
    held = [b"/usr/bin/python3", b"/bin/python3", b"/usr/bin/../../bin/python3.11", b"/abs"]
    assert all(warm.holds(p) for p in held)
    for not_held in (b"/usr/bin/python2", b"/usr/bin", b"/", b"/etc/passwd", b"/etc", b"/loop", b"/bin/x/y"):
        assert not warm.holds(not_held), not_held
    if os.geteuid() == 0:  # a whiteout (a name the client does not have) holds nothing
        os.mknod(root / "usr/bin/gone", stat.S_IFCHR | 0o600, 0)
        assert not warm.holds(b"/usr/bin/gone") and not warm.holds(b"/bin/gone")


def test_a_command_the_tree_held_is_not_found_once_the_client_removed_it(remote, tmp_path):
    """The supervisor looks a command up in the warm tree before the process starts: only the
    tree as the client now has it (reconciled first), never what an earlier run left."""
    held = f"{remote.appliance.dir}/state/warm/*/tree{PROJECT}/tool"
    steps = session(
        remote,
        tmp_path,
        {"tool": "#!/bin/sh\necho tool ran\n"},
        [
            "chmod +x tool && radium run -- ./tool",
            f"radium run -- ./tool && ls {held}",  # the warm tree holds it now
            "rm tool && { radium run -- ./tool || echo status $?; }",
        ],
    )
    assert steps[0][0] == b"tool ran\n"
    assert steps[1][0].startswith(b"tool ran\n") and steps[1][0].rstrip().endswith(b"/tool"), steps[1]
    assert steps[2][0] == b"status 127\n", steps[2]  # as a shell says it, before anything runs
    assert re.fullmatch(rb"radium: \S+: \./tool: No such file or directory\n", steps[2][1]), steps[2]


def test_what_changed_on_the_client_between_runs_is_seen_never_the_old(remote, tmp_path):
    files = {f"pkg/a/m{i}.py": f"value = {i}\n" * 20 for i in range(5)}
    files.update({"pkg/b/data.txt": "b data\n", "pkg/c/x.txt": "x\n", "pkg/gone/old.txt": "old\n"})
    files["read.py"] = READ_ALL
    change = (
        # same size, new content and time; a deletion; an addition; a mode; a folder renamed;
        # a file replaced by a folder of the same name; a whole folder gone
        "printf 'value = 9\\n%.0s' $(seq 20) > pkg/a/m3.py && touch -d '2020-01-01' pkg/a/m3.py\n"
        "rm pkg/a/m4.py && echo new > pkg/a/m5.py && chmod 0600 pkg/a/m1.py\n"
        "mv pkg/b pkg/b2 && rm pkg/c/x.txt && mkdir pkg/c/x.txt && echo deeper > pkg/c/x.txt/y\n"
        "rm -r pkg/gone"
    )
    steps = session(
        remote,
        tmp_path,
        files,
        [
            "radium run --stats -- python3 read.py",
            "radium run --stats -- python3 read.py",  # the warm tree made
            change,
            "radium run --stats -- python3 read.py",
            "python3 read.py",
            "radium run --stats -- python3 read.py",  # and once more, the tree pruned and grown again
        ],
    )
    before, warm, _, after, local, again = steps
    assert before[0] == warm[0] and fuse_and_warm(warm[1])[1] > 0
    assert after[0] == local[0] == again[0] != before[0], after[1].decode()
    assert fuse_and_warm(after[1])[1] > 0  # pruned, not thrown away
    tree, index = warm_index(remote)
    here = tree / PROJECT.lstrip("/") / "pkg"
    assert not (here / "a" / "m4.py").exists() and not (here / "gone").exists() and not (here / "b").exists()
    assert (here / "a" / "m3.py").read_text() == "value = 9\n" * 20
    assert (here / "c" / "x.txt" / "y").read_text() == "deeper\n"
    assert os.stat(here / "a" / "m1.py").st_mode & 0o777 == 0o600


def test_names_looked_up_in_vain_are_whiteouts_until_the_client_has_them(remote, tmp_path):
    """What a run looked up and did not find (Python's and ld.so's probes for other suffixes)
    is marked absent in the tree: an overlay whiteout, so that the next runs' lookups of it stop
    in the tree instead of asking FUSE. Once the client has such a name, runs see it."""
    probe = (
        "import os, sys\nprint(*[os.path.exists(n) for n in sys.argv[1:]], open('pkg/m.py').read().strip())\n"
    )
    # pkg/unread.bin, never read and too big to come with a listing, keeps pkg from being
    # whole (a whole folder is opaque: the overlay's lookups stop in it without whiteouts).
    files = {
        "pkg/m.py": "value = 1",
        "pkg/unread.bin": os.urandom(FILL_FILE_MAX + 1),
        "pkg/sub/n.py": "n = 1\n",
        "probe.py": probe,
    }
    names = "pkg/probe.so pkg/probe.abi3.so pkg/other.so pkg/m.py"
    steps = session(
        remote,
        tmp_path,
        files,
        [
            "radium run --stats -- python3 probe.py",
            f"radium run --stats -- python3 probe.py {names}",  # FUSE answers the probes
            f"radium run --stats -- python3 probe.py {names}",  # the tree's whiteouts do
            "echo made > pkg/probe.so",
            f"radium run --stats -- python3 probe.py {names}",
        ],
    )
    _, asked, marked, _, after = steps
    assert asked[0] == marked[0] == b"False False False True value = 1\n", marked[0]
    assert after[0] == b"True False False True value = 1\n", after[1].decode()
    assert fuse_and_warm(marked[1])[0] <= fuse_and_warm(asked[1])[0] - 3, (asked[1], marked[1])
    tree, _ = warm_index(remote)
    here = tree / PROJECT.lstrip("/") / "pkg"
    kept = os.lstat(here / "probe.abi3.so")
    assert stat.S_ISCHR(kept.st_mode) and kept.st_rdev == 0  # still absent on the client: kept
    assert not (here / "probe.so").is_char_device()  # the client has it now: its whiteout went


def test_a_folder_the_process_listed_is_made_whole_and_opaque_its_subfolders_still_merged(remote, tmp_path):
    """Python lists a package's folder and reads only the bytecode of the modules it imports:
    the folder's other small files are fetched when the process is quiet or has exited
    (run/fsfill.py), the warm tree holds the folder whole and marks it opaque (the overlay
    then never asks FUSE about its entries), and its subfolders carry a redirect to their own
    path: one the tree holds only in part still shows what only the client has. A file too
    big to come with a listing is asked for alone (up to FILL_FILE_MAX); a bigger one leaves
    its folder as it is."""
    big = os.urandom(FILL_FILE_MAX + 1)  # outer/data is not made whole
    files = {
        "pkg/__init__.py": "",
        "pkg/used.py": "value = 'used'\n",
        "pkg/unused.py": "value = 'never imported'\n" * 50,
        "pkg/large.py": "# a module bigger than a listing carries, never imported\n" * 4000,
        "pkg/notes.txt": "not Python at all\n",
        "outer/__init__.py": "",
        "outer/other.py": "value = 'other'\n",
        "outer/inner/__init__.py": "",
        "outer/inner/m.py": "value = 'inner'\n",
        "outer/data/big.bin": big,
        "main.py": (
            "import os, pkg.used, outer.inner.m\n"
            "print(pkg.used.value, outer.inner.m.value, os.listdir('outer/data'))\n"
        ),
        "read_big.py": (
            "import hashlib\nprint(hashlib.sha256(open('outer/data/big.bin', 'rb').read()).hexdigest())"
        ),
    }
    # As a project someone ran locally: bytecode beside the sources, which Python then only
    # stats (-B: none written back by the runs).
    compiled = "python3 -m compileall -q pkg outer > /dev/null"
    run = "radium run --stats -- python3 -B main.py"
    steps = session(remote, tmp_path, files, [compiled, run, run, "radium run -- python3 read_big.py"])
    assert steps[1][0] == steps[2][0] == b"used inner ['big.bin']\n", steps[1][1].decode()
    assert steps[3][0].decode().strip() == hashlib.sha256(big).hexdigest(), steps[3][1].decode()
    tree, index = warm_index(remote)
    here = tree / PROJECT.lstrip("/")
    assert (here / "pkg" / "unused.py").read_text() == files["pkg/unused.py"]
    assert (here / "pkg" / "large.py").read_text() == files["pkg/large.py"]
    assert (here / "pkg" / "notes.txt").read_text() == files["pkg/notes.txt"]
    assert (here / "outer" / "other.py").read_text() == files["outer/other.py"]
    for folder in ("pkg", "outer", "outer/inner"):
        assert os.getxattr(here / folder, "trusted.overlay.opaque") == b"y", folder
    # outer/data was held without big.bin when the last run read it through the overlay's
    # merge with FUSE (its redirect), outer opaque above it; that run's end laid it out.
    data = f"{PROJECT}/outer/data".encode()
    assert os.getxattr(here / "outer" / "data", "trusted.overlay.redirect") == data
    assert (here / "outer" / "data" / "big.bin").read_bytes() == big


def test_unlisted_subfolders_are_stand_ins_so_that_their_folder_is_whole_and_still_merged(remote, tmp_path):
    """A package folder Python lists holds subpackages no run listed: the warm tree makes each
    an empty stand-in (not opaque, redirected to its own path), so that the folder is whole
    and opaque (the overlay no longer asks FUSE about it); a later run that imports from a
    subpackage still finds its modules (FUSE's, through the redirect), and once listed the
    stand-in is a folder of the tree like any other."""
    pkg = f"{remote.appliance.dir}/state/warm/*/tree{PROJECT}/pkg"
    files = {
        "pkg/__init__.py": "",
        "pkg/used.py": "value = 'used'\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/mod.py": "value = 'from the subpackage'\n",
    }
    show = (
        f"python3 -c \"import glob, os; t = glob.glob('{pkg}')[0]; print("
        "os.getxattr(t, 'trusted.overlay.opaque'), os.listdir(t + '/sub'), "
        "os.getxattr(t + '/sub', 'trusted.overlay.redirect'), "
        "'trusted.overlay.opaque' in os.listxattr(t + '/sub'))\""
    )
    used = "radium run -- python3 -B -c 'import pkg.used; print(pkg.used.value)'"
    steps = session(
        remote,
        tmp_path,
        files,
        [
            used,
            used,
            f"radium run -- true && {show}",
            "radium run -- sh -c 'echo written > pkg/sub/new.txt' && cat pkg/sub/new.txt",
            "radium run -- python3 -B -c 'import pkg.sub.mod as m; print(m.value)'",
        ],
    )
    assert steps[1][0] == b"used\n", steps[1][1].decode()
    # pkg whole and opaque with sub an empty stand-in, merged with FUSE's, as the third run found it
    assert steps[2][0] == f"b'y' [] b'{PROJECT}/pkg/sub' False\n".encode(), steps[2]
    assert steps[3][0] == b"written\n", steps[3][1].decode()  # made in it, written back
    assert steps[4][0] == b"from the subpackage\n", steps[4][1].decode()
    _, index = warm_index(remote)
    assert f"{PROJECT}/pkg/sub".encode() in index.digests  # listed by the last run: a folder of its own


def test_what_a_run_wrote_is_not_fetched_back_by_the_next(completing_remote, tmp_path):
    """A run's output (a checkpoint, a cache) sent back to the client is kept in the appliance's
    store as its client's: the next run that reads it is served it there, not over the link."""
    write = "import hashlib, os\nopen('ckpt.bin', 'wb').write(os.urandom(3 << 20))\n"
    read = "import hashlib\nprint(hashlib.sha256(open('ckpt.bin', 'rb').read()).hexdigest())\n"
    steps = session(
        completing_remote,
        tmp_path,
        {"w.py": write, "r.py": read},
        ["radium run -- python3 w.py", "radium run --stats -- python3 r.py", "python3 r.py"],
    )
    _, (remote_out, stats), (local_out, _) = steps
    assert remote_out == local_out and len(remote_out.strip()) == 64
    fetched = int(re.search(rb"bytes fetched (\d+)", stats)[1])
    assert fetched < 256 << 10, stats.decode()  # not the 3 MiB written: its hashes only


@pytest.mark.parametrize(
    "complete, work", [(True, 2), (True, 0), (False, 2)], ids=["complete_files", "exits_at_once", "off"]
)
def test_a_file_read_in_part_is_fetched_whole_for_the_next_runs(two_hosts, tmp_path, complete, work):
    """A file read out of order — as the loader maps a library, touching some of its pages — is
    fetched whole in the background while the program goes on working (here: 2 s), or, when it
    exits at once, before its run ends, so that the next runs read all of it from the warm
    tree, none of it through FUSE or over the link."""
    touch = (
        "import hashlib, time\n"  # the same imports as the reader's, whose libraries come warm
        "with open('lib.so', 'rb') as f:\n"
        "    for at in (9, 2, 6):\n"
        "        f.seek(at << 20); f.read(4096)\n"
        f"time.sleep({work})\n"  # the program's work, while the rest of the file arrives
    )
    whole = "import hashlib\nprint(hashlib.sha256(open('lib.so', 'rb').read()).hexdigest())\n"
    data = os.urandom(12 << 20)
    # Exiting at once, the run's end waits for the rest (WAIT_FOR_COMPLETION).
    config = WAIT_FOR_COMPLETION if work == 0 else ""
    remote = start_remote(two_hosts, tmp_path, config if complete else "[run]\ncomplete_files = false\n")
    try:
        steps = session(
            remote,
            tmp_path,
            {"lib.so": data, "touch.py": touch, "whole.py": whole},
            ["radium run -- python3 touch.py", "radium run --stats -- python3 whole.py", "python3 whole.py"],
        )
        _, (remote_out, stats), (local_out, _) = steps
        assert remote_out == local_out
        fetched = int(re.search(rb"bytes fetched (\d+)", stats)[1])
        if complete:  # not the 12 MiB: it was all fetched in the first run, and laid out
            assert fetched < 1 << 20, stats.decode()
            tree, _ = warm_index(remote)
            assert (tree / PROJECT.lstrip("/") / "lib.so").read_bytes() == data
        else:  # the 9 MiB the first run did not read
            assert fetched >= 8 << 20, stats.decode()
    finally:
        remote.close()
        remote.appliance.stop()


def test_owners_as_the_client_has_them_whichever_id_slot(remote, tmp_path):
    probe = (
        "import os\n"
        "for p in ('mine.txt', 'theirs.txt', 'sub'):\n"
        "    st = os.stat(p)\n"
        "    print(p, st.st_uid, st.st_gid, open(p).read().strip() if p.endswith('txt') else '')\n"
    )
    files = {"mine.txt": "mine", "theirs.txt": "theirs", "sub/f": "f", "probe.py": probe}
    extra = "chown 1234:2345 theirs.txt sub && chmod 0644 theirs.txt"
    steps = session(
        remote,
        tmp_path,
        files,
        [extra, *["radium run --stats -- python3 probe.py"] * 3, "python3 probe.py"],
    )
    outs = [out for out, _ in steps[1:]]
    # Three runs, three id slots (radiumd hands them out in turn): the second and third from the warm tree.
    assert outs[0] == outs[1] == outs[2] == outs[3], outs
    assert b"theirs.txt 1234 2345 theirs" in outs[0]
    assert fuse_and_warm(steps[3][1])[1] > 0
    tree, _ = warm_index(remote)
    st = os.stat(tree / PROJECT.lstrip("/") / "theirs.txt")
    assert (st.st_uid, st.st_gid) == (1234, 2345)  # on disk as on the client; shifted only when mounted


def test_a_run_holding_the_tree_keeps_it_while_another_sees_a_change(remote, tmp_path):
    """Run A uses the warm tree and waits; meanwhile a file changes and run B starts: B must see
    the change (it cannot prune under A, so it goes without), and A's tree must not change under it."""
    files = {"pkg/v.txt": "one\n", "pkg/w.txt": "w\n", "read.py": READ_ALL}
    both = (
        "radium run -- cat pkg/v.txt pkg/w.txt\n"
        "d=$(mktemp -d) && mkfifo $d/gate $d/said\n"
        "radium run --stats -- sh -c 'cat pkg/v.txt; echo started; read x; cat pkg/v.txt' "
        "< $d/gate > $d/said 2> $d/a.err &\n"
        "exec 3> $d/gate 4< $d/said\n"
        "read first <&4; read started <&4\n"
        "echo two > pkg/v.txt\n"
        "radium run --stats -- cat pkg/v.txt\n"
        "echo go >&3; exec 3>&-\n"
        "read last <&4; wait\n"
        'echo "A: $first $started $last"; cat $d/a.err >&2; rm -r $d'
    )
    steps = session(remote, tmp_path, files, [both, "radium run --stats -- cat pkg/v.txt"])
    out, err = steps[0]
    lines = out.decode().splitlines()
    assert lines[0:2] == ["one", "w"]
    assert lines[2] == "two"  # B: the change, although A held the warm tree that had "one"
    assert lines[3] == "A: one started one", lines  # A: its world did not change under it
    a_stats, b_stats = STATS.findall(err)[-1], STATS.findall(err)[0]
    assert int(a_stats[1]) > 0 and int(b_stats[1]) == 0, err.decode()
    assert steps[1][0] == b"two\n"
    assert fuse_and_warm(steps[1][1])[1] > 0  # alone again: pruned and used


def test_a_tree_left_mid_change_is_never_used_and_is_rebuilt(remote, tmp_path):
    files = {"pkg/v.txt": "real\n"}
    steps = session(remote, tmp_path, files, ["radium run -- cat pkg/v.txt"] * 2)
    assert [o for o, _ in steps] == [b"real\n"] * 2
    tree, index = warm_index(remote)
    # As a crash mid-change leaves it: the mark, and a file half written.
    (tree.parent / "busy").touch()
    (tree / PROJECT.lstrip("/") / "pkg" / "v.txt").write_text("ha")
    (tree / PROJECT.lstrip("/") / "pkg" / "half").write_text("")
    steps = session(remote, tmp_path, files, ["radium run --stats -- sh -c 'cat pkg/v.txt; ls pkg'"] * 2)
    for out, err in steps:
        assert out == b"real\nv.txt\n", (out, err)
    assert fuse_and_warm(steps[0][1])[1] == 0
    assert fuse_and_warm(steps[1][1])[1] > 0
    tree, _ = warm_index(remote)
    assert not (tree.parent / "busy").exists()
    assert not (tree / PROJECT.lstrip("/") / "pkg" / "half").exists()


class _Growing:
    """A warm tree grown by hand from one client folder, /data, whose listing a test sets, on
    a clock that advances a second at each reading: a budget of 1.5 s lets one chunk of a big
    file be copied (OVERRUN 0), so a test sees a copy cut short and resumed run by run."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int = 1 << 30) -> None:
        class Clock:
            now = 0.0

            @classmethod
            def monotonic(cls) -> float:
                cls.now += 1.0
                return cls.now

        monkeypatch.setattr(warmtree, "time", Clock)
        monkeypatch.setattr(warmtree, "OVERRUN", 0.0)  # (0.5 s: a file that nearly fits is finished)
        self.store = ContentStore(tmp_path / "store", 1 << 30)
        self.nodes = NodeTable()
        self.nodes.install_listing(
            self.nodes.root,
            DirListing(path=b"/", entries=[DirEntry(name=b"data", attr=self.attr(stat.S_IFDIR | 0o755))],
                       digest=b"r" * 32),
        )  # fmt: skip
        self.data = self.nodes.by_ino[self.nodes.by_path[b"/data"]]
        self.contents = Contents(None, self.store, TreeStats())  # type: ignore[arg-type]  # nothing is asked
        self.warm = WarmTree(tmp_path / "warm", limit)
        assert self.warm.share() and self.warm.claim()

    def attr(self, mode: int, data: bytes = b"") -> Attr:
        pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
        for piece in pieces:
            self.store.put(chunk_hash(piece), piece)
        t = 1_700_000_000_000_000_000 + len(data)
        return Attr(mode=mode, uid=os.getuid(), gid=os.getgid(), size=len(data), atime_ns=t, mtime_ns=t,
                    ctime_ns=t, nlink=1, ino=len(data), dev=1,
                    chunks=[chunk_hash(p) for p in pieces] if stat.S_ISREG(mode) else None)  # fmt: skip

    def client_has(self, files: dict[bytes, tuple[bytes, int]]) -> None:
        """/data as a listing gives it: name -> (content, mode)."""
        entries = [DirEntry(name=n, attr=self.attr(stat.S_IFREG | m, c)) for n, (c, m) in files.items()]
        digest = chunk_hash(b"".join(n + c for n, (c, _) in files.items()))
        self.nodes.install_listing(self.data, DirListing(path=b"/data", entries=entries, digest=digest))

    def grow(self) -> int:
        return self.warm.grow(self.nodes, self.contents, budget=1.5)

    def aside_sizes(self) -> list[int]:
        return [p.stat().st_size for p in self.warm.partial.iterdir()]


def test_a_big_file_cut_short_by_the_budget_is_finished_by_the_next_runs_ends(tmp_path, monkeypatch):
    """A run's end adds to the tree for BUDGET seconds: a file of several chunks is copied aside
    and renamed in whole, so one the time cuts short (a big library on a slow disk) is never
    in the tree in part, does not hold the run's end beyond a chunk, and is finished by the
    next runs' ends; a copy aside of content no longer wanted is dropped."""
    g = _Growing(tmp_path, monkeypatch)
    old, new = os.urandom(3 * CHUNK_SIZE + 100), os.urandom(4 * CHUNK_SIZE + 7)
    copy = g.warm.files / "data" / "lib.so"

    def grow() -> int:
        added = g.grow()
        assert not copy.exists() or copy.read_bytes() == new  # never in part, never the old content
        return added

    g.client_has({b"lib.so": (old, 0o755)})
    assert grow() == 0 and g.aside_sizes() == [CHUNK_SIZE]
    assert grow() == 0 and g.aside_sizes() == [2 * CHUNK_SIZE]
    # The client's file changed: its new content is copied, the old one's copy aside dropped.
    g.client_has({b"lib.so": (new, 0o700)})
    assert grow() == 0 and g.aside_sizes() == [CHUNK_SIZE]
    assert [grow() for _ in range(4)] == [0, 0, 0, 1]
    assert copy.read_bytes() == new and g.aside_sizes() == []
    st = copy.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime_ns == 1_700_000_000_000_000_000 + len(new)
    assert g.warm.index.size == len(new)


def test_a_copy_cut_short_counts_against_the_limit(tmp_path, monkeypatch):
    """The tree's bytes on disk never pass its limit (`warm_tree_bytes`), its copy aside
    included: a file that would fit only beside the tree's files is not added while a big
    file's copy is aside, and the big file is finished, not left aside for good."""
    big, small = os.urandom(3 * CHUNK_SIZE + 100), os.urandom(CHUNK_SIZE)
    g = _Growing(tmp_path, monkeypatch, limit=len(big))

    def on_disk() -> int:
        tree = sum(p.stat().st_size for p in g.warm.files.rglob("*") if p.is_file())
        return tree + sum(g.aside_sizes())

    g.client_has({b"big.bin": (big, 0o644)})
    assert [g.grow() for _ in range(3)] == [0, 0, 0] and g.aside_sizes() == [3 * CHUNK_SIZE]
    # The client made a small file beside it, looked at first (smallest first): adding it would
    # leave no room to finish the big one, whose copy would then stay aside, over the limit.
    g.client_has({b"big.bin": (big, 0o644), b"small.txt": (small, 0o644)})
    assert g.grow() == 1 and on_disk() <= len(big)
    assert (g.warm.files / "data" / "big.bin").read_bytes() == big
    assert not (g.warm.files / "data" / "small.txt").exists() and g.aside_sizes() == []
    assert g.grow() == 0 and g.warm.index.size == len(big) == on_disk()


def test_the_limit_and_turning_it_off(two_hosts, tmp_path):
    files = {"big.bin": os.urandom(2 << 20), "small.txt": "small\n"}
    files["read.py"] = READ_ALL.replace("'pkg'", "'.'")
    r = start_remote(two_hosts, tmp_path, "[run]\nwarm_tree_bytes = 1048576\n")
    try:
        steps = session(r, tmp_path, files, ["radium run -- python3 read.py"] * 2 + ["python3 read.py"])
        assert steps[0][0] == steps[1][0] == steps[2][0]
        tree, index = warm_index(r)
        assert (tree / PROJECT.lstrip("/") / "small.txt").exists()
        assert not (tree / PROJECT.lstrip("/") / "big.bin").exists() and index.size <= 1 << 20
    finally:
        r.close()
        r.appliance.stop()
    off = tmp_path / "off"
    off.mkdir()
    r = start_remote(two_hosts, off, "[run]\nwarm_tree_bytes = 0\n")
    try:
        steps = session(r, off, files, ["radium run --stats -- python3 read.py"] * 2)
        assert steps[0][0] == steps[1][0] and fuse_and_warm(steps[1][1])[1] == 0
        assert not (r.appliance.dir / "state" / "warm").exists()
    finally:
        r.close()
        r.appliance.stop()


def test_a_full_disk_stops_the_tree_growing_and_nothing_breaks(two_hosts, tmp_path):
    """The warm trees' folder is a 2 MiB tmpfs: what a run read does not fit (the disk fills
    mid-file, or the index cannot be saved); every run still sees the client's files, and
    whatever the tree holds is whole."""
    warm = tmp_path / "appliance" / "state" / "warm"

    def mount(app):
        warm.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(warm)], check=True)

    files: dict[str, str | bytes] = {f"pkg/m{i}.bin": os.urandom(400_000) for i in range(8)}
    files["read.py"] = READ_ALL
    r = None
    try:
        r = start_remote(two_hosts, tmp_path, before_start=mount)
        steps = session(r, tmp_path, files, [*["radium run -- python3 read.py"] * 3, "python3 read.py"])
        assert len({out for out, _ in steps}) == 1, steps
        for folder in warm.iterdir():
            project = folder / "tree" / PROJECT.lstrip("/") / "pkg"
            for copy in project.iterdir() if project.exists() else ():
                assert copy.read_bytes() == files[f"pkg/{copy.name}"], copy
    finally:
        if r is not None:
            r.close()
            r.appliance.stop()
        subprocess.run(["umount", "-l", str(warm)], check=False)


def test_what_a_revoked_client_left_on_the_appliance_is_removed_and_no_one_elses(remote, tmp_path):
    """A client's warm tree, kept listings and tenant record describe its files: once its key is
    gone (here removed by hand, as `radium-admin revoke --appliance CONFIG` does), radiumd sees
    it at its next message and the fork server removes them; another client's stay."""
    files = {"pkg/big.bin": os.urandom(2 << 20), "read.py": READ_ALL}
    for name in ("vm1", "vm2"):
        session(remote, tmp_path, files, ["radium run -- python3 read.py"], client_name=name)
    state = remote.appliance.dir / "state"

    def left(name: str) -> list[str]:
        paths = [f"warm/{name}", f"cas/listings/{name}.idx", f"cas/tenants/{name}.chunks"]
        return [p for p in paths if (state / p).exists()]

    assert len(left("vm1")) == len(left("vm2")) == 3, (left("vm1"), left("vm2"))
    revoke = [str(BIN / "radium-admin"), "revoke", "vm1", "--appliance", str(remote.appliance.config)]
    assert subprocess.run(revoke, capture_output=True, timeout=30).returncode == 0
    assert remote.client("vm2").run("health").returncode == 0  # a message: radiumd sees the key gone
    deadline = time.monotonic() + 30
    while left("vm1"):
        assert time.monotonic() < deadline, left("vm1")
        time.sleep(0.05)
    assert len(left("vm2")) == 3
    assert sorted(p.name for p in (state / "warm").iterdir()) == ["vm2"]  # nothing set aside remains
