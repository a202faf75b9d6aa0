"""The warm tree (remoting/run/warmtree.py): what a client's runs read, kept on the appliance
as real files under the next runs' overlay — served by the kernel, never stale.

Each test runs several `radium run`s in one private mount namespace on the client (one
tmpfs project, changed between runs as a person would), and checks what each run saw, the
FUSE operations it cost, and what the appliance's warm tree holds on disk.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import msgspec
import pytest
from support import BIN
from test_run import PROJECT, project_setup

from radium.remoting.run.warmtree import _Index

pytestmark = pytest.mark.timeout(240)

STATS = re.compile(rb"FUSE operations (\d+), warm tree files (\d+)")


def session(remote, tmp_path, files: dict[str, str | bytes], steps: list[str], client_name: str = "vm1"):
    """Run `steps` (bash; `radium` is the client) one after another in one private mount
    namespace holding the project; each step's stdout and stderr, split at markers."""
    client = remote.client(client_name)
    radium = shlex.quote(str(BIN / "radium"))
    body = "".join(f"echo '@@step {i}'; echo '@@step {i}' >&2\n{step}\n" for i, step in enumerate(steps))
    script = f"set -e\n{project_setup(tmp_path, files)}\ncd {PROJECT}\nradium() {{ {radium} \"$@\"; }}\n{body}"
    argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]
    out = subprocess.run(client.host.command(argv), env=client.env(), capture_output=True, timeout=int(os.environ.get("WT_TIMEOUT", "200")))
    assert out.returncode == 0, out.stderr.decode()[-4000:]
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
    print(first_err.decode(), second_err.decode()); print([l for l in remote.appliance.lines if "warm" in str(l)]); os.system(f"find {remote.appliance.dir}/state/warm | head -30")
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
