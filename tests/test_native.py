"""The native decode kernel (lmstudio_lite/native/decode.c) in float32, one row, against PyTorch
(every format and several rows: test_native_quant.py)."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_models import KINDS, VOCAB, build
from lmstudio_lite import native
from lmstudio_lite.checkpoints.folder import load_weights
from lmstudio_lite.model import KVCache
from lmstudio_lite.model.config import ModelConfig
from lmstudio_lite.model.inference import InferenceModel
from lmstudio_lite.model.transformer import Transformer
from lmstudio_lite.paths import cache_dir

PROMPT = [1, 5, 17, 42, 8, 77, 3, 64, 21, 9]


def test_kernel_builds_on_this_machine():
    """CI installs a C compiler (.ci/run): the fast path must really be on there, not silently off."""
    assert native.decode_library() is not None, native.status()
    assert native.status() == "on"


@pytest.fixture(scope="module", params=KINDS)
def prepared(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param).save_pretrained(folder)
    model = InferenceModel(load_weights(folder))
    assert model.native is not None, native.status()
    model.folder = folder
    return model


def decode(model, steps: list[int], threads: int = 2):
    """Logits [1, len(steps), V] of a prompt prefill then one token at a time, and the cache.
    ``model``: an ``InferenceModel`` (the native step) or its net (the reference forward)."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    cache = KVCache(model.config, 1, len(PROMPT) + len(steps))
    try:
        with torch.inference_mode():
            model(torch.tensor([PROMPT]), 0, cache, last_only=True)
            out = [model(torch.tensor([[t]]), len(PROMPT) + j, cache) for j, t in enumerate(steps)]
    finally:
        torch.set_num_threads(old_threads)
    return torch.cat(out, dim=1), cache


def test_native_step_equals_the_pytorch_step(prepared):
    steps = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    got, got_cache = decode(prepared, steps)
    ref, ref_cache = decode(prepared.net, steps)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cache.k, ref_cache.k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cache.v, ref_cache.v, atol=1e-5, rtol=1e-5)


def test_native_step_gives_the_same_numbers_on_one_thread(prepared):
    steps = [4, 9, 2, 60, 33]
    one, _ = decode(prepared, steps, threads=1)
    two, _ = decode(prepared, steps, threads=2)
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


def test_rows_beyond_eight_decode_to_the_reference_logits(prepared):
    """The kernel serves 1..8 rows (decode.c's MAX_ROWS): nine rows at one position go through the
    reference forward, and a scheduler's nine rows at their own positions and cache rows through
    the kernel 8 rows per call; both give the net's logits."""
    net = prepared.net
    prompts = torch.tensor([PROMPT[:3]] * 4 + [PROMPT[3:6]] * 5)  # [9, 3]
    caches = [KVCache(prepared.config, 9, 8) for _ in range(2)]
    out = []
    with torch.inference_mode():
        for model, cache in zip((prepared, net), caches):
            model(prompts, 0, cache)
            first = model(torch.arange(9).view(9, 1), 3, cache)[:, 0]
            # rows 0..3 one step ahead, then all nine at their own positions, in reverse cache order
            ahead = model.decode_rows(torch.arange(4) + 20, torch.full((4,), 4), torch.arange(4), cache)
            rows = model.decode_rows(torch.arange(9) + 30, torch.tensor([4] * 5 + [5] * 4), torch.arange(8, -1, -1),
                                     cache)
            out.append(torch.cat([first, ahead, rows]))
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [
    (10, 2, 64),  # 5 queries per KV head: two passes of scores (4 + 1) and of weighted values
    (8, 1, 32),   # 8 queries per KV head, narrow heads: one pass of values holds all 8
    (4, 2, 128),  # wide heads: values 2 heads per pass
    (6, 2, 48),   # widths without a compiled case (3 and 5 vectors) take the general loops
    (3, 1, 80),
])
def test_grouped_heads_attend_as_pytorch_at_every_width(heads, kv_heads, head_dim, kv_dtype):
    """The kernel goes through K and V once for all the queries of a KV head (decode.c's
    attend_heads): every group size and head width gives the reference's logits and cache, over
    positions long enough for its four-position blocks and every tail, three rows at once; in a
    float32 cache and in a float16 one (rounded as torch rounds, widened exactly)."""
    torch.manual_seed(1)
    cfg = ModelConfig(family="llama", vocab_size=VOCAB, n_layer=2, n_head=heads, n_kv_head=kv_heads,
                      head_dim=head_dim, d_model=64, d_ff=96, max_seq_len=64)
    net = Transformer(cfg)
    net.init_weights()
    model = InferenceModel(net)
    assert model.native is not None, native.status()
    prompts = torch.randint(3, VOCAB, (3, 23), generator=torch.Generator().manual_seed(2))
    out = []
    with torch.inference_mode():
        for m in (model, net):
            cache = KVCache(cfg, 3, 40, dtype=kv_dtype)
            m(prompts, 0, cache)
            # positions 23..28: four-position blocks with no tail, then tails of 1, 2 and 3
            rows = [m.decode_rows(torch.tensor([5, 6, 7]) + j, torch.full((3,), 23 + j), torch.arange(3), cache)
                    for j in range(6)]
            out.append((torch.cat(rows), cache.k.clone(), cache.v.clone()))
    (got, got_k, got_v), (ref, ref_k, ref_v) = out
    torch.testing.assert_close(got, ref, atol=1e-5 if kv_dtype == torch.float32 else 1e-4, rtol=1e-5)
    # float32 sums 1e-6 apart may round to float16 values one unit apart, never more
    tol = dict(atol=1e-5, rtol=1e-5) if kv_dtype == torch.float32 else dict(atol=2 ** -24, rtol=2 ** -10)
    assert got_k.dtype == kv_dtype
    torch.testing.assert_close(got_k.float(), ref_k.float(), **tol)
    torch.testing.assert_close(got_v.float(), ref_v.float(), **tol)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 40])  # 40: not a multiple of 16, the blocks through attend_any
def test_rows_deep_in_a_context_attend_in_blocks_as_pytorch(kv_dtype, head_dim):
    """Past 1,024 positions (decode.c's ATT_BLOCK) a row's attention is cut into blocks of positions,
    each a chunk of its own, and merged: the reference's logits at the blocks' edges (one block at
    1,023; two at 1,024, the second of one position, and 2,047; three at 2,048, 2,100), and every
    row's numbers the same bit for bit alone or beside rows at other positions."""
    torch.manual_seed(3)
    cfg = ModelConfig(family="llama", vocab_size=VOCAB, n_layer=2, n_head=6, n_kv_head=2, head_dim=head_dim,
                      d_model=64, d_ff=96, max_seq_len=2176)
    net = Transformer(cfg)
    net.init_weights()
    model = InferenceModel(net)
    assert model.native is not None, native.status()
    prompts = torch.randint(3, VOCAB, (3, 2101), generator=torch.Generator().manual_seed(4))
    caches = {}
    with torch.inference_mode():
        for name, m in (("native", model), ("reference", net)):
            caches[name] = KVCache(cfg, 3, 2176, dtype=kv_dtype)
            m(prompts, 0, caches[name])
        alone_cache = KVCache(cfg, 3, 2176, dtype=kv_dtype)
        alone_cache.k.copy_(caches["native"].k), alone_cache.v.copy_(caches["native"].v)
        for positions in ([1023, 1024, 2048], [2047, 2100, 700]):
            tokens, at, rows = torch.tensor([7, 8, 9]), torch.tensor(positions), torch.arange(3)
            got = model.decode_rows(tokens, at, rows, caches["native"])
            ref = net.decode_rows(tokens, at, rows, caches["reference"])
            alone = torch.cat([model.decode_rows(tokens[b:b + 1], at[b:b + 1], rows[b:b + 1], alone_cache)
                               for b in range(3)])
            torch.testing.assert_close(got, ref, atol=1e-5 if kv_dtype == torch.float32 else 1e-4, rtol=1e-5)
            assert torch.equal(got, alone)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_training_net_keeps_no_inference_state(family):
    """Preparing leaves the net a plain Transformer: it trains (gradients reach the fused q|k|v's
    views), its logits are the inference model's, and moving it leaves the inference model's
    own tensors valid (the native step keeps decoding what it was built from)."""
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else 4,
                      d_model=64, d_ff=96, max_seq_len=32, tie_embeddings=family == "llama",
                      act="silu" if family == "llama" else "gelu_new")
    net = Transformer(cfg)
    net.init_weights()
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        before = net(ids)
    inference = InferenceModel(net)
    assert inference.native is not None, native.status()
    with torch.inference_mode():
        torch.testing.assert_close(inference(ids), before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(ids), before, atol=1e-5, rtol=1e-5)
    net.train()
    net(ids).logsumexp(-1).mean().backward()
    assert net.blocks[0].attn.k.weight.grad is not None and net.blocks[0].attn.k.weight.grad.abs().sum() > 0

    def one_token_steps():  # every token through the native step, which reads only its own tensors
        cache = KVCache(inference.config, 1, len(PROMPT))
        with torch.inference_mode():
            return torch.cat([inference(torch.tensor([[t]]), j, cache) for j, t in enumerate(PROMPT)], dim=1)
    ref = one_token_steps()
    net.to(torch.bfloat16)  # new tensors for the net; the old ones live on in the inference model
    gc.collect()
    torch.testing.assert_close(one_token_steps(), ref, atol=0, rtol=0)


def test_build_errors_name_the_compiler_and_its_message(tmp_path):
    with pytest.raises(native.BuildError, match="no C compiler found.*no-such-cc"):
        native.build(native.SOURCE, tmp_path, compiler="no-such-cc")
    bad = tmp_path / "bad.c"
    bad.write_text("int broken( {\n")
    with pytest.raises(native.BuildError, match="could not compile bad.c"):
        native.build(bad, tmp_path)
    assert not list(tmp_path.glob("*.so"))  # no half-written library left behind


DISABLED_RUN = """
import torch
from lmstudio_lite import native
from lmstudio_lite.model.config import ModelConfig
from lmstudio_lite.model.inference import InferenceModel
from lmstudio_lite.model.kv_cache import KVCache
from lmstudio_lite.model.transformer import Transformer

torch.manual_seed(0)
net = Transformer(ModelConfig(family="llama", vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=96,
                              max_seq_len=32)).eval()
model = InferenceModel(net)
ids = torch.tensor([[1, 5, 17, 42, 8]])
with torch.inference_mode():
    caches = [KVCache(net.config, 1, 8) for _ in range(2)]
    steps = [(m(ids, 0, c), m(torch.tensor([[9]]), 5, c)) for m, c in zip((model, net), caches)]
torch.testing.assert_close(steps[0], steps[1])
print(native.status(), model.native)
"""


def test_disabled_kernel_leaves_pytorch_decoding():
    """LMSTUDIO_LITE_NATIVE=0 (read when the kernel is first asked for, so in a fresh process):
    no kernel, and the inference model decodes through the reference forward."""
    env = {**os.environ, native.DISABLE_ENV: "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", DISABLED_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["off", f"({native.DISABLE_ENV}=0)", "None"]


def test_the_library_is_built_where_the_native_dir_says(monkeypatch):
    """$LMSTUDIO_LITE_NATIVE_DIR (homes on one machine sharing one build) holds the built library;
    without it, the app's cache folder does."""
    assert native.decode_library() is not None, native.status()
    assert os.environ.get(native.DIR_ENV), "the tests' session fixture sets it"
    assert native.build_dir() == Path(os.environ[native.DIR_ENV])
    assert list(native.build_dir().glob("decode-*.so")), "the library this process loaded is not there"
    monkeypatch.delenv(native.DIR_ENV)
    assert native.build_dir() == cache_dir() / "native"
