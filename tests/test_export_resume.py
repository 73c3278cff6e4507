"""A kill between the export's rename and result.json: the resumed run finds its export
and does not make a second copy."""
from __future__ import annotations

import types

import torch
from fixtures_models import STORIES

from lmstudio_lite.checkpoints.folder import load_weights
from lmstudio_lite.checkpoints.tokenizer import Tokenizer
from lmstudio_lite.training.build import Built, export_model
from lmstudio_lite.training.checkpointing import RunFolder


def test_second_export_of_the_same_run_returns_the_first(tmp_path):
    built = Built(load_weights(STORIES), Tokenizer.from_folder(STORIES), "llama", torch.float32, 64, [])
    spec = types.SimpleNamespace(out_name=None, from_scratch=False, base_model=str(STORIES), lora_rank=0)
    run = RunFolder(tmp_path / "runs" / "r1")
    run.create({})
    models = tmp_path / "models"
    first = export_model(built, spec, run, models, {})
    again = export_model(built, spec, run, models, {})  # the resume after the kill
    assert again == first and [p.name for p in models.iterdir()] == [first.name]
    other = RunFolder(tmp_path / "runs" / "r2")
    other.create({})
    spec.out_name = first.name  # another run wanting the same name still gets its own folder
    assert export_model(built, spec, other, models, {}) == models / f"{first.name}-r2"
