"""The CNN benchmark's driver: the topology and radiumd (run_remote's), then `radium bench`."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from benchmarks.run_remote.bench import Bench
from benchmarks.run_remote.workers import RADIUM


class CnnBench(Bench):
    def run(self) -> dict[str, Any]:
        a = self.args
        client = self.start_appliance("app1")
        out_json, chart = self.tmp / "cnn.json", a.cnn_plot or self.tmp / "cnn.png"
        timing = ["--steps", str(a.cnn_steps)] if a.cnn_steps else ["--seconds", str(a.cnn_seconds)]
        argv = [RADIUM, "bench", "--models", a.cnn_models, "--batch", a.cnn_batch, *timing,
                "--warmup", str(a.cnn_warmup), "--rounds", str(a.cnn_rounds), "--appliance", "app1",
                "--json", str(out_json),
                "--plot", str(chart.resolve())]  # fmt: skip
        self.log("radium bench " + " ".join(argv[2:]))
        started = time.monotonic()
        env = {**self.client_env(client), "COLUMNS": "150"}  # the table unwrapped in the log
        proc = self.topo.client.popen(
            argv, env=env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.children.append(proc)
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:
            printed.append(line)
            print("  | " + line, end="", flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"radium bench failed (exit {proc.returncode})")
        record = json.loads(out_json.read_text())
        record["wall_bench_s"] = time.monotonic() - started
        record["chart"] = str(chart)
        record["printed"] = "".join(printed)
        return record
