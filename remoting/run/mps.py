"""A partial lease of NVIDIA devices held to its share by a CUDA MPS daemon of the run's own
(docs/run.md, "Partial NVIDIA devices"): the script that starts it inside the run, and the
environment the process and the daemon are given."""

from __future__ import annotations

from . import channel

# The run's own CUDA MPS control daemon (see docs/run.md, "Partial NVIDIA devices"): started
# inside the run, as its user, before the process; it and its server end with the run's PID
# namespace.  The defaults set here bind every client of this daemon, the process included.
MPS_DIR = "/dev/shm/.radium-mps"  # private to the run, thrown away with it
MPS_START = """\
# Radium: start this run's CUDA MPS daemon with its lease's limits, then the process.
set -e
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
PATH=/.radium/bin:$PATH nvidia-cuda-mps-control -d
control() { echo "$1" | PATH=/.radium/bin:$PATH nvidia-cuda-mps-control >/dev/null; }
control "set_default_active_thread_percentage $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
IFS=,
for limit in $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT; do
  control "set_default_device_pinned_mem_limit ${limit%%=*} ${limit#*=}"
done
unset IFS
set +e
exec "$@"
"""


def mps_environment(mps: channel.Mps) -> dict[str, str]:
    """What the process (and the MPS daemon started before it) is given for a partial lease."""
    return {
        "CUDA_MPS_PIPE_DIRECTORY": f"{MPS_DIR}/pipe",
        "CUDA_MPS_LOG_DIRECTORY": f"{MPS_DIR}/log",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(mps.threads),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": ",".join(
            f"{index}={mib}M" for index, mib in sorted(mps.memory_mib.items())
        ),
    }
