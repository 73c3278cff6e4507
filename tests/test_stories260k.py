"""A real trained model reproduces its greedy references exactly (like llama2.c's test)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmstudio_lite import load_model

from shared_data import MODELS  # noqa: E402

FOLDER = MODELS / "stories260K"
REFS = json.loads((MODELS / "stories260K-reference.json").read_text())
PROMPTS = [k for k in REFS if not k.startswith("_")]


@pytest.fixture(scope="module")
def model():
    return load_model(FOLDER, device="cpu", dtype="float32")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_encoding_matches_reference(model, prompt):
    assert model.tokenizer.encode(prompt) == REFS[prompt]["input_ids"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_ids_and_text_match_reference(model, prompt):
    ref = REFS[prompt]
    stream = model.generate(prompt, max_new_tokens=64, temperature=0, ignore_eos=True)
    text = "".join(stream)
    assert stream.new_ids == ref["new_ids"]
    assert text == ref["new_text"]
    assert stream.stats["finish_reason"] == "length"
    assert stream.stats["prompt_tokens"] == len(ref["input_ids"])
    assert stream.stats["new_tokens"] == 64


def test_logits_api_shape(model):
    import torch

    ids = torch.tensor([REFS[PROMPTS[0]]["input_ids"]])
    out = model.logits(ids)
    assert out.shape == (1, ids.shape[1], 512) and out.dtype == torch.float32
    assert int(out[0, -1].argmax()) == REFS[PROMPTS[0]]["new_ids"][0]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_cli_generate_json_matches_reference(prompt):
    r = subprocess.run([sys.executable, "-m", "lmstudio_lite", "generate", "--model", str(FOLDER), "--prompt", prompt,
                        "--max-new-tokens", "64", "--ignore-eos", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == REFS[prompt]["input_ids"]
    assert out["new_ids"] == REFS[prompt]["new_ids"]
    assert out["text"] == REFS[prompt]["new_text"]
    assert set(out["stats"]) >= {"prompt_tokens", "new_tokens", "finish_reason", "ttft_s", "decode_tok_s"}


def test_sampling_is_reproducible_with_a_seed(model):
    a = "".join(model.generate("Once upon a time", max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7))
    b = "".join(model.generate("Once upon a time", max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7))
    c = "".join(model.generate("Once upon a time", max_new_tokens=24, temperature=1.0, top_p=0.9, seed=8))
    assert a == b and a != c


def test_overlong_prompt_is_reported_or_truncated(model):
    from lmstudio_lite.generation import ContextOverflowError

    long = "Once upon a time " * 400
    with pytest.raises(ContextOverflowError):
        model.generate(long, max_new_tokens=8)
    stream = model.generate(long, max_new_tokens=8, on_overflow="truncate")
    "".join(stream)
    assert stream.stats["truncated_tokens"] > 0
    assert stream.stats["prompt_tokens"] < model.context_length
