"""DDP under torchrun: two CPU processes on gloo follow the one-process loss curve."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_training import make_base, write_text
from lmstudio_lite.training.run import run_training
from lmstudio_lite.training.spec import TrainSpec

REPO = Path(__file__).resolve().parent.parent


def metrics(home: Path) -> list[dict]:
    (run,) = list((home / "runs").iterdir())
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base") / "llama")


# Each case starts three Python processes (torchrun + 2 ranks) that import torch: ~20 s on 2 busy cores.
@pytest.mark.parametrize("lora", [0, pytest.param(4, marks=[pytest.mark.slow, pytest.mark.heavy])])  # LoRA under DDP: -m heavy
def test_two_gloo_processes_match_one_process(base, tmp_path, monkeypatch, lora):
    data = write_text(tmp_path / "data.txt", repeat=40)
    # float32: bf16 autocast rounds a 2-row and a 4-row matmul differently, and this test is about DDP's math.
    args = dict(steps=4, lr=3e-3, batch_size=4, grad_accum=2, seq_len=32, eval_every=2, save_every=2,
                lora_rank=lora, precision="fp32")
    # one process, in this process
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path / "single"))
    single = run_training(TrainSpec(data=str(data), base_model=str(base), threads=1, device="cpu", **args))
    assert single.state == "finished"
    # two processes under torchrun, same global batch (2 rows per rank per micro-batch)
    env = {**os.environ, "LMSTUDIO_LITE_HOME": str(tmp_path / "ddp"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    flags = ["--model", str(base), "--data", str(data), "--steps", "4", "--lr", "3e-3", "--batch-size", "4",
             "--grad-accum", "2", "--seq-len", "32", "--eval-every", "2", "--save-every", "2",
             "--lora-rank", str(lora), "--threads", "1", "--device", "cpu", "--precision", "fp32"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmstudio_lite.training.cli", *flags]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-5)
    # The same steps are evaluated, and their losses agree (pytest 9.2's approx refuses None entries).
    evaluated = {m["step"]: m["val_loss"] for m in one if m.get("val_loss") is not None}
    assert evaluated and sorted(evaluated) == [2, 4]
    assert {m["step"]: m["val_loss"] for m in two if m.get("val_loss") is not None} == pytest.approx(evaluated, rel=1e-5)
    assert one[-1]["loss"] < one[0]["loss"]
    # rank 0 alone wrote files: one run folder, one model
    assert len(list((tmp_path / "ddp" / "models").iterdir())) == 1
    assert "finished 4 steps" in proc.stderr
