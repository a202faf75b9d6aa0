"""A small OpenCL program as a data scientist would write one: numpy and pyopencl, a vector add.

Issue 15's "warm pyopencl vector add" (numpy + pyopencl, a few file requests): the time
from the first import to a verified result is what `radium run` adds to (loading the
libraries and the ICD loader, finding the platform, building the kernel), not the kernel.

`python -m benchmarks.vecadd` prints one JSON line: seconds from the first import to the
checked result, the import share of it, and the device.
"""

from __future__ import annotations

import json
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import pyopencl as cl  # noqa: E402

IMPORTED = time.perf_counter()

KERNEL = """
__kernel void add(__global const float *a, __global const float *b, __global float *c) {
    int i = get_global_id(0);
    c[i] = a[i] + b[i];
}
"""


def main() -> int:
    ctx = cl.create_some_context(interactive=False)
    queue = cl.CommandQueue(ctx)
    rng = np.random.default_rng(0)
    a, b = (rng.random(1 << 20, dtype=np.float32) for _ in range(2))
    flags = cl.mem_flags
    a_dev = cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=a)
    b_dev = cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=b)
    c_dev = cl.Buffer(ctx, flags.WRITE_ONLY, a.nbytes)
    program = cl.Program(ctx, KERNEL).build()
    program.add(queue, a.shape, None, a_dev, b_dev, c_dev)
    c = np.empty_like(a)
    cl.enqueue_copy(queue, c, c_dev)
    ok = bool(np.allclose(c, a + b))
    done = time.perf_counter()
    device = ctx.devices[0]
    print(json.dumps({"seconds": done - T0, "import_s": IMPORTED - T0, "ok": ok,
                      "device": f"{device.platform.name}: {device.name}"}))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
