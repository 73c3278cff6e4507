"""The native decode kernel (lmstudio_lite/native/decode.c) in float32, one row, against PyTorch
(every format and several rows: test_native_quant.py)."""
from __future__ import annotations

import pytest
import torch

from hf_models import KINDS, VOCAB, build
from lmstudio_lite import native
from lmstudio_lite.checkpoints.folder import load_weights
from lmstudio_lite.model import KVCache

PROMPT = [1, 5, 17, 42, 8, 77, 3, 64, 21, 9]


def test_kernel_builds_on_this_machine():
    """CI installs a C compiler (.ci/run): the fast path must really be on there, not silently off."""
    assert native.decode_library() is not None, native.status()
    assert native.status() == "on"


@pytest.fixture(scope="module", params=KINDS)
def prepared(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param).save_pretrained(folder)
    model = load_weights(folder).prepare_for_inference()
    assert model._native is not None, native.status()
    model.folder = folder
    return model


def decode(model, steps: list[int], use_native: bool, threads: int = 2):
    """Logits [1, len(steps), V] of a prompt prefill then one token at a time, and the cache."""
    kept, old_threads = model._native, torch.get_num_threads()
    model._native = kept if use_native else None
    torch.set_num_threads(threads)
    cache = KVCache(model.config, 1, len(PROMPT) + len(steps))
    try:
        with torch.inference_mode():
            model(torch.tensor([PROMPT]), 0, cache, last_only=True)
            out = [model(torch.tensor([[t]]), len(PROMPT) + j, cache) for j, t in enumerate(steps)]
    finally:
        model._native = kept
        torch.set_num_threads(old_threads)
    return torch.cat(out, dim=1), cache


def test_native_step_equals_the_pytorch_step(prepared):
    steps = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    got, got_cache = decode(prepared, steps, use_native=True)
    ref, ref_cache = decode(prepared, steps, use_native=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cache.k, ref_cache.k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cache.v, ref_cache.v, atol=1e-5, rtol=1e-5)


def test_native_step_gives_the_same_numbers_on_one_thread(prepared):
    steps = [4, 9, 2, 60, 33]
    one, _ = decode(prepared, steps, use_native=True, threads=1)
    two, _ = decode(prepared, steps, use_native=True, threads=2)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)


def test_native_step_refuses_bad_positions_and_tokens(prepared):
    cache = KVCache(prepared.config, 1, 4)
    with torch.inference_mode():
        prepared(torch.tensor([[1, 2, 3]]), 0, cache)
        prepared(torch.tensor([[4]]), 3, cache)
        with pytest.raises(IndexError, match="KV cache holds 4 positions"):
            prepared(torch.tensor([[5]]), 4, cache)
        with pytest.raises(IndexError, match="outside the vocabulary"):
            prepared(torch.tensor([[VOCAB]]), 2, cache)


def test_rows_beyond_eight_take_the_pytorch_step(prepared):
    """The kernel serves 1..8 rows (decode.c's MAX_ROWS): more must not reach it."""
    calls = []
    real = prepared._native

    class Spy:
        head, fused_head = real.head, real.fused_head

        def usable(self, ids, cache):
            return real.usable(ids, cache)

        def step(self, *a, **kw):
            calls.append(a)
            return real.step(*a, **kw)

    prepared._native = Spy()
    try:
        with torch.inference_mode():
            cache = KVCache(prepared.config, 9, 8)
            prepared(torch.tensor([PROMPT[:3]] * 9), 0, cache)
            prepared(torch.tensor([[1]] * 9), 3, cache)
            assert calls == []
            cache = KVCache(prepared.config, 2, 8)
            prepared(torch.tensor([PROMPT[:3], PROMPT[3:6]]), 0, cache)
            prepared(torch.tensor([[1], [2]]), 3, cache)
            assert len(calls) == 1
    finally:
        prepared._native = real


def test_moving_the_model_drops_the_prepared_state(prepared):
    """.to() makes new parameter tensors: the kernel's addresses and the fused copies must go with it."""
    model = load_weights(prepared.folder).prepare_for_inference()
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        before = model(ids)
        model.to(torch.float32)
        assert model._native is None and not model._decode_ready
        assert all(b.attn.fused is None for b in model.blocks)
        torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
        model.prepare_for_inference()
        assert model._native is not None


def test_build_errors_name_the_compiler_and_its_message(tmp_path):
    with pytest.raises(native.BuildError, match="no C compiler found.*no-such-cc"):
        native.build(native.SOURCE, tmp_path, compiler="no-such-cc")
    bad = tmp_path / "bad.c"
    bad.write_text("int broken( {\n")
    with pytest.raises(native.BuildError, match="could not compile bad.c"):
        native.build(bad, tmp_path)
    assert not list(tmp_path.glob("*.so"))  # no half-written library left behind


def test_disabled_kernel_leaves_pytorch_decoding(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_status", "not built yet")
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert native.decode_library() is None
    assert native.status().startswith("off")
    folder = tmp_path / "m"
    build("llama-gqa-untied").save_pretrained(folder)
    model = load_weights(folder).prepare_for_inference()
    assert model._native is None and model._decode_ready
