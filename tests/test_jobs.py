"""The background job runner: status snapshots, one job at a time, cancel within a step,
failures as readable messages, thread counts kept to the job thread."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from helpers_training import make_base, write_text
from lmstudio_lite.paths import app_paths
from lmstudio_lite.training import trainer as trainer_mod
from lmstudio_lite.training.checkpointing import load_checkpoint
from lmstudio_lite.training.jobs import JobBusyError, JobRunner
from lmstudio_lite.training.spec import TrainSpec


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base") / "llama")


@pytest.fixture()
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path / "home"))
    r = JobRunner()
    yield r
    r.cancel()
    r.wait(30)


@pytest.fixture()
def data(tmp_path):
    return write_text(tmp_path / "data.txt")


def spec(base, data, **kw):
    settings = dict(data=str(data), base_model=str(base), steps=6, lr=3e-3, batch_size=4, seq_len=32,
                    eval_every=3, save_every=0, threads=1)
    settings.update(kw)
    return TrainSpec(**settings)


def wait_for(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_finished_job_status_agrees_with_metrics(runner, base, data):
    run_id = runner.start(spec(base, data, log_every=2))
    assert runner.status()["run_id"] == run_id
    st = runner.wait(60)
    assert st["state"] == "finished", st["error"]
    assert st["step"] == st["total_steps"] == 6 and st["eta_s"] is None and st["error"] is None
    metrics = runner.read_metrics(run_id)
    assert [m["step"] for m in metrics] == [2, 3, 4, 6]  # every 2nd step plus the evaluations
    assert st["history"] == [(m["step"], m["loss"], m.get("val_loss")) for m in metrics]
    assert st["loss"] == metrics[-1]["loss"] and st["val_loss"] == metrics[-1]["val_loss"]
    assert st["probes"] == metrics[-1]["probes"]
    assert st["model_path"] and (app_paths().models / st["model_path"].rsplit("/", 1)[-1]).is_dir()
    assert any("model saved" in line for line in st["log"])
    runs = runner.list_runs()
    assert runs[0]["run_id"] == run_id and runs[0]["model_path"] == st["model_path"]
    assert runs[0]["resumable"] is False


def test_second_start_is_refused_and_cancel_stops_within_one_step(runner, base, data):
    run_id = runner.start(spec(base, data, steps=400, eval_every=0))
    wait_for(lambda: runner.status()["step"] >= 3)
    with pytest.raises(JobBusyError, match="still running"):
        runner.start(spec(base, data))
    before = runner.status()["step"]
    assert runner.cancel() is True  # the step under way when Cancel is pressed ends, then the job stops
    after = runner.status()["step"]
    st = runner.wait(60)
    assert st["state"] == "cancelled" and before <= st["step"] <= after + 1
    assert st["model_path"] is None
    weights, state = load_checkpoint(app_paths().runs / run_id)
    assert state["step"] == st["step"] and weights
    assert runner.list_runs()[0]["resumable"] is True
    # the kept checkpoint resumes in the same runner (the busy slot is free again)
    assert runner.start(resume=run_id) == run_id
    wait_for(lambda: runner.status()["step"] > st["step"])
    assert runner.cancel() is True
    assert runner.wait(60)["state"] == "cancelled"
    assert runner.cancel() is False  # nothing runs now


@pytest.mark.parametrize("problem", ["missing data", "broken model", "empty data"])
def test_errors_end_in_failed_with_a_readable_message(runner, base, data, tmp_path, problem):
    if problem == "missing data":
        s, expect = spec(base, tmp_path / "nope.txt"), "nope.txt"
    elif problem == "broken model":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{not json")
        s, expect = spec(broken, data), "config.json"
    else:
        (tmp_path / "empty.txt").write_text("   \n")
        s, expect = spec(base, tmp_path / "empty.txt"), "empty"
    runner.start(s)
    st = runner.wait(60)
    assert st["state"] == "failed"
    assert expect in st["error"] and "Traceback" not in st["error"]
    assert any("failed" in line for line in st["log"])


def test_job_limits_only_its_own_thread_count(runner, base, data, monkeypatch):
    seen = []
    real = trainer_mod.Trainer.train_step

    def spy(self):
        seen.append(torch.get_num_threads())
        return real(self)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner.start(spec(base, data, steps=2, threads=1))
        assert runner.wait(60)["state"] == "finished"
        assert seen and set(seen) == {1}  # the job thread ran with its own count
        assert torch.get_num_threads() == 2  # the main (chat) thread kept its count
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [2]  # and threads started afterwards get the process default back
    finally:
        torch.set_num_threads(before)


def test_overfitting_warning_reaches_the_status_and_the_runs_list_keeps_the_best(runner, base, data, monkeypatch):
    """D11: validation loss 1.0, 1.5, 2.0 (train loss falling meanwhile): the status carries the warning
    for the UI, and the run's record names step 2 as the kept, exported best."""
    from lmstudio_lite.training.trainer import Trainer

    real, scripted = Trainer.evaluate, [1.0, 1.5, 2.0]

    def evaluate(self):
        return {**real(self), "val_loss": scripted.pop(0)}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run_id = runner.start(spec(base, data, eval_every=2, overfit_warn_evals=2))
    st = runner.wait(60)
    assert st["state"] == "finished", st["error"]
    assert "validation loss rose 2 evaluations in a row (1.000 → 2.000)" in st["warning"]
    run = runner.list_runs()[0]
    assert run["run_id"] == run_id and run["outcome"] == "finished"
    assert (run["best"]["step"], run["best"]["val_loss"]) == (2, 1.0)
    assert any("exporting the best weights: step 2" in line for line in st["log"])
