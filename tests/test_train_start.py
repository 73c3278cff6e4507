"""The Train tab's actions on the bundled model and samples: the default settings train the bundled
sample (D5), and Start refuses data the preview rejects, starting no run (D4)."""
from __future__ import annotations

import pytest

from lmstudio_lite.paths import app_paths, bundled_models_dir
from lmstudio_lite.services.registry import Registry
from lmstudio_lite.services import Services
from lmstudio_lite.services import train_actions as act
from lmstudio_lite.services.train_actions import UserError
from lmstudio_lite.training.jobs import JobRunner

BUNDLED = "lmstudio-lite-tiny"
SAMPLE = "sample_stories.txt"


@pytest.fixture
def services(tmp_path):
    paths = app_paths(tmp_path / "home").ensure()
    registry = Registry(paths, bundled=bundled_models_dir(), hf_dirs=[], device="cpu", dtype="float32")
    return Services(paths, registry, jobs=JobRunner(paths))


def test_bundled_sample_trains_with_the_default_settings(services):
    d = act.defaults_for(services, BUNDLED)
    preview = act.preview_data(services, BUNDLED, SAMPLE, d["seq_len"], d["batch_size"])
    assert 1 <= preview["batch_size"] <= preview["train_examples"]
    if preview["batch_size"] < d["batch_size"]:  # the form takes the fitted value, and says why
        assert any("batch size lowered" in w for w in preview["warnings"])
    spec = act.make_spec(services, BUNDLED, SAMPLE, steps=2, lr=d["lr"], batch_size=preview["batch_size"],
                         seq_len=d["seq_len"], eval_every=1)
    assert act.start_run(services, spec).startswith("Started run")
    status = services.jobs.wait(timeout=300)
    assert status["state"] == "finished", status.get("error")


def test_start_is_refused_on_data_that_cannot_fill_a_batch(services):
    d = act.defaults_for(services, BUNDLED)
    spec = act.make_spec(services, BUNDLED, SAMPLE, steps=2, batch_size=64, seq_len=d["seq_len"])
    with pytest.raises(UserError, match="cannot be used.*batch size is 64"):
        act.start_run(services, spec)
    assert services.jobs.status()["state"] == "idle"  # no run was started


def test_start_is_refused_on_a_malformed_file(services, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "only"}\n')
    with pytest.raises(UserError, match="line 2"):
        act.preview_data(services, BUNDLED, str(bad), 64, 1)
    spec = act.make_spec(services, BUNDLED, str(bad), steps=2, batch_size=1, seq_len=64)
    with pytest.raises(UserError, match="cannot be used.*line 2"):
        act.start_run(services, spec)
    assert services.jobs.status()["state"] == "idle"
