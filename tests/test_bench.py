"""`radium bench`: the paper's models as the notes count them, the arithmetic, the worker's
reports and errors, and the whole command through `radium run` on the test appliance.

No speed is asserted: only that what is measured is counted, compared and written right.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from support import BIN, wait_until

from radium.remoting.bench import cases
from radium.remoting.bench.runner import CaseResult, Record, Side, pool

torch = pytest.importorskip("torch", reason="torch is not installed (./dev setup installs the bench extra)")

from radium.remoting.bench import models  # noqa: E402

pytestmark = pytest.mark.timeout(300)
TRAIN = [sys.executable, "-m", "radium.remoting.bench.train"]


@pytest.mark.parametrize("name", list(cases.PARAMETERS))
def test_each_model_has_the_notes_parameter_count_and_an_11_way_head(name):
    model = models.build(name)
    assert models.parameter_count(model) == cases.PARAMETERS[name]
    out = model.train()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 11)


def test_the_v2_resnets_are_pre_activation_and_v1_post():
    v1, v2 = models.build("resnet20"), models.build("resnet20_v2")
    assert isinstance(v1.blocks[0], models.BlockV1) and v1.post is None
    assert isinstance(v2.blocks[0], models.BlockV2) and isinstance(v2.post, models.ShiftOnlyBatchNorm)
    # v2's shift-only batch norms: TensorFlow's decay 0.999, epsilon 1e-3, no scale.
    bn = v2.blocks[0].bn1
    assert bn.momentum == pytest.approx(0.001) and bn.eps == 1e-3 and bn.weight is None
    # The shortcut of a stage's first block: a stride-2 subsample, new channels zero on both sides.
    x = torch.randn(1, 16, 32, 32)
    short = models._shortcut(x, 2, 8)
    assert short.shape == (1, 32, 16, 16)
    assert short[:, :8].abs().sum() == 0 and short[:, 24:].abs().sum() == 0
    assert torch.equal(short[:, 8:24], x[:, :, ::2, ::2])


def test_the_arithmetic_of_a_case_and_a_record():
    assert cases.images_per_s(100, 64, 25.6) == pytest.approx(250.0)
    assert cases.Case("alexnet", 128, 2).global_batch == 256
    assert [c.name for c in cases.cases(["alexnet"], [32, 512], [1])] == ["alexnet b32", "alexnet b512"]
    side = dict(steps=10, import_s=1, setup_s=1, warmup_s=1, timed_wall_s=1, cpu_s=2, step_median_s=0.1,
                threads=2, device="cpu", host="h", versions={"torch": "x"}, parameters=1)  # fmt: skip
    local, remote = Side(images_per_s=200.0, **side), Side(images_per_s=150.0, **side)
    both = CaseResult("alexnet", 32, 1, local, remote)
    alone = CaseResult("alexnet", 128, 1, None, remote, "no cuda device here")
    assert both.ratio == pytest.approx(0.75) and alone.ratio is None
    data = Record("0.1.0", "2026-12-06", "app1", 10, 0.0, 2, 2, None, [both, alone]).to_json()
    assert [c["ratio"] for c in data["cases"]] == [pytest.approx(0.75), None]
    assert data["cases"][1]["local_missing"] == "no cuda device here"
    # Rounds pooled: images over all timed loops ÷ their time, not a mean of rates.
    fast = Side(**{**side, "images_per_s": 300.0, "timed_wall_s": 1.0, "steps": 10, "cpu_s": 2.0})
    slow = Side(**{**side, "images_per_s": 100.0, "timed_wall_s": 3.0, "steps": 10, "cpu_s": 6.0})
    pooled = pool([fast, slow])
    assert pooled.images_per_s == pytest.approx(600 / 4) and pooled.steps == 20 and pooled.cpu_s == 8.0
    assert pool([fast]) is fast


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_the_worker_reports_start_up_warm_up_and_steady_state_apart():
    out = subprocess.run(
        [*TRAIN, "--model", "resnet20_v2", "--batch", "4", "--steps", "3", "--warmup", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = events(out.stdout)
    ready, progress, result = said[0], said[1:-1], said[-1]
    assert ready["event"] == "ready" and result["event"] == "result"
    assert ready["threads"] == 1 and ready["parameters"] == 269_467 and ready["device"].startswith("cpu")
    assert ready["import_s"] > 0 and ready["setup_s"] > 0
    # Progress at most a line a second, and at the end of the warm-up and of the timed steps.
    ends = [(e["steps"], e["warmup"]) for e in progress if e["event"] == "progress"]
    assert len(ends) == len(progress) and (2, True) in ends and ends[-1] == (5, False)
    assert len(result["warmup_step_s"]) == 2 and len(result["step_s"]) == 3  # the warm-up apart
    assert result["images_per_s"] == pytest.approx(3 * 4 / result["timed_wall_s"])
    assert result["warmup_s"] >= sum(result["warmup_step_s"])


def test_with_seconds_the_warm_up_sets_how_many_steps_are_timed():
    argv = [*TRAIN, "--model", "resnet20_v2", "--batch", "2", "--warmup", "3", "--seconds", "2"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = events(out.stdout)[-1]
    warm = result["warmup_step_s"][1:]  # the first step pays one-time costs: not counted
    expected = max(5, round(2 / ((warm[0] + warm[1]) / 2)))  # 2 s ÷ the median of steps 2 and 3
    assert result["steps"] == len(result["step_s"]) == expected


def test_the_worker_trains_on_cifar_10_files_when_given_them(tmp_path):
    """--data DIR: CIFAR-10's python batches (here five small ones in its format), not synthetic."""
    import pickle

    rng = torch.Generator().manual_seed(1)
    for i in range(1, 6):
        batch = {
            b"data": torch.randint(0, 256, (20, 3072), generator=rng, dtype=torch.uint8).numpy(),
            b"labels": torch.randint(0, 10, (20,), generator=rng).tolist(),
        }
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    argv = [
        *TRAIN,
        "--model",
        "alexnet",
        "--batch",
        "8",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--data",
        str(tmp_path),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = events(out.stdout)[-1]
    assert result["event"] == "result" and result["steps"] == 3 and result["global_batch"] == 8
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot read data_batch_3" in events(bad.stdout)[-1]["message"]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


@pytest.mark.parametrize(
    ("args", "kind", "words"),
    [
        (["--device", "cuda"], "device", "no cuda device here"),
        (["--device", "cpu", "--gpus", "2"], "device", "needs 2 GPUs"),
        (["--data", "/nonexistent"], "data", "cannot read data_batch_1"),
        (["--batch", "30000"], "oom", ""),  # under a 6 GiB address-space limit
    ],
)
def test_the_worker_says_what_failed_in_one_line(args, kind, words):
    argv = [*TRAIN, "--model", "alexnet", "--batch", "4", "--steps", "1", "--warmup", "0", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory)
    said = events(out.stdout)
    assert out.returncode == 2 and said[-1]["event"] == "error", out.stdout + out.stderr
    assert said[-1]["kind"] == kind and words in said[-1]["message"]
    assert "Traceback" not in out.stderr


def leases_on(client) -> int:
    return sum(len(d["leases"]) for a in client.json("smi")["appliances"] for d in a["devices"])


def test_bench_through_radium_run_on_the_test_appliance(appliance, client, tmp_path):
    """The whole command on a tiny case: here and on the appliance, the link, JSON, chart, compare."""
    work = tmp_path / "work"
    work.mkdir()
    result, chart = tmp_path / "r.json", tmp_path / "r.png"
    argv = [str(BIN / "radium"), "bench", "--models", "resnet20_v2", "--batch", "4", "--steps", "3",
            "--warmup", "1", "--threads", "1", "--appliance", "app1", "--json", str(result),
            "--plot", str(chart)]  # fmt: skip
    out = subprocess.run(argv, env=client.env(), cwd=work, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(result.read_text())
    assert data["appliance"] == "app1" and data["steps"] == 3 and data["warmup"] == 1 and data["threads"] == 1
    (case,) = data["cases"]
    local, remote = case["local"], case["remote"]
    assert (case["model"], case["batch"], case["gpus"]) == ("resnet20_v2", 4, 1)
    assert case["ratio"] == pytest.approx(remote["images_per_s"] / local["images_per_s"])
    assert local["versions"] == remote["versions"] and local["threads"] == remote["threads"] == 1
    assert local["parameters"] == remote["parameters"] == 269_467
    assert remote["started_s"] > 0 and remote["warmup_s"] > 0 and remote["images_per_s"] > 0
    link = data["link"]
    assert link["rtt_ms"] > 0 and link["to_appliance_mb_s"] > 0 and link["from_appliance_mb_s"] > 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "resnet20_v2 b4" in out.stdout and "on both sides (checked)" in out.stdout
    assert "link (through radium run)" in out.stdout
    # Nothing is left on the appliance: no lease, no run folder.
    wait_until(lambda: leases_on(client) == 0, 30, "the runs' leases released")
    runs = appliance.dir / "state" / "runs"
    wait_until(lambda: not runs.exists() or not list(runs.iterdir()), 30, "the runs' folders removed")
    same = subprocess.run(
        [str(BIN / "radium"), "bench", "--compare", str(result), str(result)],
        env=client.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same.returncode == 0 and "+0.000" in same.stdout, same.stdout + same.stderr


def test_bench_refuses_what_cannot_run_in_one_line(client, tmp_path):
    def bench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "radium"), "bench", "--no-link", *args], env=client.env(),
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip

    for args, words in (
        (["--models", "resnet21"], "unknown model resnet21"),
        (["--batch", "x"], "expected whole numbers"),
        (["--plot", "chart.svg"], "ending in .png"),
        (["--compare", "a.json", "b.json"], "not a radium bench result"),
        (["--models", "alexnet", "--batch", "2", "--steps", "1", "--appliance", "nosuch"], "nosuch"),
        (["--seconds", "5", "--warmup", "1"], "--warmup 2 or more"),
        (["--rounds", "0"], "--rounds must be 1 or more"),
    ):
        out = bench(*args)
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr

    # Every device held by another session: no lease for the run, said in a line; nothing left.
    held = client.json("request-gpus", "-n", "2")
    try:
        out = bench("--models", "alexnet", "--batch", "2", "--steps", "1", "--warmup", "0")
        assert out.returncode != 0 and "the run failed" in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    finally:
        client.run("release-gpus")
    assert held["lease"]["parts"] and leases_on(client) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA or ROCm device here (torch sees none)")
def test_the_worker_trains_on_the_gpu_and_synchronises_its_clock():
    """On a GPU machine: the device named, the images made on it, two GPUs data parallel."""
    gpus = min(2, torch.cuda.device_count())
    argv = [
        *TRAIN,
        "--model",
        "resnet20_v2",
        "--batch",
        "32",
        "--steps",
        "5",
        "--warmup",
        "2",
        "--gpus",
        str(gpus),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ready, result = events(out.stdout)[0], events(out.stdout)[-1]
    assert ready["device"].split()[0] in ("cuda", "rocm") and result["global_batch"] == 32 * gpus
