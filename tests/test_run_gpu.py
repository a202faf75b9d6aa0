"""`radium run` on an NVIDIA appliance: a partial lease is held to its share by CUDA MPS.

Needs real hardware: an NVIDIA GPU with its driver, CUDA MPS (nvidia-cuda-mps-control)
and pycuda in this venv (`pip install -e .[nvidia]`).  Everywhere else it skips and says
so; the limits themselves are computed and checked without a GPU in test_devices.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import PY, Appliance, Client

from radium.remoting.devices.nvml import NvmlBackend

pytestmark = pytest.mark.timeout(300)

PROBE = """
import json, os
import pycuda.driver as cuda
cuda.init()
ctx = cuda.Device(0).make_context()
free, total = cuda.mem_get_info()
def fits(share):
    try:
        cuda.mem_alloc(int(total * share)).free()
        return True
    except cuda.MemoryError:
        return False
print(json.dumps({"small": fits(0.3), "big": fits(0.7),
                  "threads": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")}))
ctx.pop()
"""


def _gpu_with_mps() -> str | None:
    """Why this machine cannot run the test, or None."""
    if not NvmlBackend().available():
        return "no NVIDIA driver (libnvidia-ml)"
    if shutil.which("nvidia-cuda-mps-control") is None:
        return "no CUDA MPS (nvidia-cuda-mps-control)"
    try:
        import pycuda.driver  # noqa: F401
    except Exception as exc:  # ImportError, or a driver that cannot load
        return f"pycuda cannot be used ({exc})"
    return None


@pytest.fixture
def nvidia_remote(two_hosts, tmp_path):
    why = _gpu_with_mps()
    if why is not None:
        pytest.skip(f"{why}: MPS limits of partial NVIDIA leases are checked only on a GPU host")
    app = Appliance(
        tmp_path / "appliance",
        host=two_hosts.appliance,
        address=two_hosts.appliance.address,
        port=7470,
        extra_config='\n[devices]\nbackends = ["nvml"]\n',
    ).start()
    try:
        yield app, Client(app.enroll("vm1"), tmp_path / "vm1-state", host=two_hosts.client)
    finally:
        app.stop()


def test_half_a_gpu_cannot_take_more_than_half_its_memory(nvidia_remote, tmp_path):
    app, client = nvidia_remote
    venv_python = str(Path(PY).parent / "python")

    def run(*args: str) -> dict:
        out = client.run("run", *args, "--", venv_python, "-c", PROBE, timeout=240)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    half = run("-p", "0.5")
    assert half == {"small": True, "big": False, "threads": "50"}, half
    whole = run("-p", "1")
    assert whole["small"] and whole["big"] and whole["threads"] is None, whole
    assert subprocess.run(["pgrep", "-f", "nvidia-cuda-mps"], capture_output=True).stdout == b""


def test_the_mps_start_script_is_valid_sh_and_the_limits_are_in_mps_units():
    """Without a GPU: what the run is given for a partial lease (the GPU test above runs it)."""
    from radium.remoting.run.channel import Mps
    from radium.remoting.run.mps import MPS_START, mps_environment

    syntax = subprocess.run(["sh", "-n", "-c", MPS_START], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    env = mps_environment(Mps(memory_mib={1: 4096, 0: 8192}, threads=50))
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=8192M,1=4096M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    # Private to the run: /dev/shm is always a fresh tmpfs there, even when /tmp is the client's.
    assert env["CUDA_MPS_PIPE_DIRECTORY"].startswith("/dev/shm/")
