"""Our transformer against Hugging Face transformers on random-weight tiny models."""
from __future__ import annotations

import pytest
import torch

from hf_models import KINDS, VOCAB, build, hf_greedy
from lmstudio_lite.checkpoints.folder import load_weights, save_folder
from lmstudio_lite.model import KVCache
from lmstudio_lite.model.kv_cache import Packed
from lmstudio_lite.model.inference import InferenceModel

PROMPT = [1, 5, 17, 42, 8, 77, 3, 64, 21, 9]


def greedy_no_cache(model, ids, n):
    ids = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


def greedy_cached(model, ids, n):
    cache = KVCache(model.config, 1, len(ids) + n, dtype=model.dtype)
    out = []
    with torch.inference_mode():
        logits = model(torch.tensor([ids]), 0, cache, last_only=True)
        pos = len(ids)
        for _ in range(n):
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            logits = model(torch.tensor([[tok]]), pos, cache)
            pos += 1
    return out


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    hf = build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    # Small shards so every variant also exercises the sharded index path.
    hf.save_pretrained(folder, max_shard_size="60KB" if request.param in ("qwen2", "gpt2") else "5GB")
    ours = load_weights(folder)
    return request.param, hf, ours, folder


def test_logits_match(pair):
    _, hf, ours, _ = pair
    ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert (ref - got).abs().max().item() <= 1e-4


def test_greedy_32_tokens_with_and_without_cache(pair):
    _, hf, ours, _ = pair
    ref = hf_greedy(hf, PROMPT, 32)
    assert greedy_no_cache(ours, PROMPT, 32) == ref
    assert greedy_cached(ours, PROMPT, 32) == ref
    inference = InferenceModel(ours)  # fused weights, [C, V] head copy and the native step
    assert greedy_cached(inference, PROMPT, 32) == ref
    assert greedy_cached(inference, PROMPT, 32) == ref


def test_cache_written_in_two_chunks_equals_one_prefill(pair):
    _, _, ours, _ = pair
    ids = torch.tensor([PROMPT])
    cache = KVCache(ours.config, 1, 32)
    with torch.inference_mode():
        full = ours(ids)
        a = ours(ids[:, :4], 0, cache)
        b = ours(ids[:, 4:], 4, cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_sharded_checkpoint_was_exercised(pair):
    kind, _, _, folder = pair
    if kind in ("qwen2", "gpt2"):
        assert (folder / "model.safetensors.index.json").exists()


def test_save_then_transformers_loads_same_logits(pair, tmp_path):
    import transformers as tf

    _, hf, ours, _ = pair
    save_folder(ours, tmp_path / "saved", max_shard_bytes=80_000)
    again = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(0, VOCAB, (1, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    reloaded = load_weights(tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), ours(ids), atol=0, rtol=0)


def test_bfloat16_path_agrees_with_float32(pair):
    """bf16 on the CPU tracks fp32, before and after the [out, in] inference layout."""
    _, _, ours, folder = pair
    low = load_weights(folder, dtype=torch.bfloat16)
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        ref = torch.softmax(ours(ids).float(), -1)
        got = torch.softmax(low(ids).float(), -1)
        prepared = torch.softmax(InferenceModel(low)(ids).float(), -1)
    assert (ref - got).abs().max().item() < 0.05
    assert (ref - prepared).abs().max().item() < 0.05


def test_bfloat16_layout_streams_through_mv_and_keeps_decode(pair):
    """An InferenceModel of a bf16 CPU model stores weights [out, in] (so a
    batch-1 step takes torch.mv) and its cached one-token steps give the same next-token
    distributions as the unprepared bf16 model, fed the same tokens (free-running greedy
    may part at a bf16 near-tie: the lean step rounds each residual add once, not twice);
    batch 2 (the matmul path) agrees too."""
    _, _, _, folder = pair
    plain = load_weights(folder, dtype=torch.bfloat16)
    fast = InferenceModel(load_weights(folder, dtype=torch.bfloat16))
    w = fast.net.blocks[0].mlp.down.weight
    assert w.stride(0) == 1 and w.stride(1) == w.shape[0]  # [in, out] view of [out, in] storage
    assert fast.head_t is None or fast.head_t.data_ptr() == fast.net.tok_emb.weight.data_ptr()  # no copy
    tokens = greedy_cached(plain, PROMPT, 16)

    def step_probs(model):
        cache = KVCache(model.config, 1, len(PROMPT) + 16, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = [model(torch.tensor([PROMPT]), 0, cache, last_only=True)[0, -1]]
            out += [model(torch.tensor([[t]]), len(PROMPT) + j, cache)[0, -1] for j, t in enumerate(tokens[:-1])]
        return torch.softmax(torch.stack(out).float(), -1)
    assert (step_probs(fast) - step_probs(plain)).abs().max().item() < 0.05
    ids = torch.tensor([PROMPT, PROMPT[::-1]])
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids).float(), plain(ids).float(), atol=0.05, rtol=0.05)


def test_attention_matches_reference_kernel():
    """SDPA paths (prefill, cached chunk, GQA decode) equal plain matmul + softmax."""
    from lmstudio_lite.model.transformer import attention, attention_reference

    g = torch.Generator().manual_seed(0)
    for H, KV, T, L in [(4, 4, 7, 7), (4, 2, 5, 9), (6, 2, 1, 11), (4, 4, 1, 3), (8, 1, 3, 3)]:
        q = torch.randn(2, H, T, 16, generator=g)
        k, v = torch.randn(2, KV, L, 16, generator=g), torch.randn(2, KV, L, 16, generator=g)
        torch.testing.assert_close(attention(q, k, v, causal=True), attention_reference(q, k, v, causal=True),
                                   atol=1e-5, rtol=1e-5)


def test_inference_layout_keeps_logits(pair):
    """The inference layout (fused q/k/v and gate/up, [C, V] head copy) changes no logit, and
    the net's q, k and v become views of the fused matrix, not a second copy."""
    _, hf, _, folder = pair
    model = load_weights(folder)
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        before = model(ids)
        inference = InferenceModel(model)
        after = inference(ids)
        ref = hf(ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert (after - ref).abs().max().item() <= 1e-4
    fused_weight = inference.qkv[0][0]
    assert model.blocks[0].attn.q.weight.data_ptr() == fused_weight.data_ptr()


def test_batched_rows_at_their_own_positions_match_the_general_forward(pair):
    """``decode_rows`` (the scheduler's step: each row at its own position in its own cache row),
    through the net and through the inference model, against the cache-free forward of each row's
    whole sequence; a position past the cache is refused."""
    _, _, ours, folder = pair
    prompts = [PROMPT, PROMPT[::-1][:7]]  # different lengths: the rows sit at different positions
    steps = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    slots = torch.tensor([1, 0])  # row b lives in cache row 1 - b
    with torch.inference_mode():
        want = [ours(torch.tensor([p + steps[b].tolist()]))[0, len(p):] for b, p in enumerate(prompts)]
        for model in (ours, InferenceModel(load_weights(folder))):
            cache = KVCache(model.config, 2, len(PROMPT) + 6)
            for b, p in enumerate(prompts):
                model(torch.tensor([p]), Packed([int(slots[b])], [0], [len(p)]), cache)
            got = [model.decode_rows(steps[:, j], torch.tensor([len(p) + j for p in prompts]), slots, cache)
                   for j in range(6)]  # [2, V] each
            for b in range(2):
                torch.testing.assert_close(torch.stack([g[b] for g in got]), want[b], atol=1e-5, rtol=1e-5)
            with pytest.raises(IndexError, match="KV cache holds"):
                model.decode_rows(steps[:, 0], torch.tensor([len(PROMPT) + 6, 7]), slots, cache)


def test_prompts_side_by_side_match_each_prompts_own_forward(pair):
    """A ``Packed`` pass (the scheduler's prefill: several sequences' tokens in one row, each from its
    own cached prefix into its own cache row), through the net and the inference model, against the
    cache-free forward of each whole sequence; its K/V are what each sequence's own pass writes."""
    _, _, ours, folder = pair
    prefixes = [PROMPT[:3], [], PROMPT[::-1][:5]]  # cached lengths 3, 0 and 5
    news = [PROMPT[3:9], PROMPT[:4], [7, 11]]
    slots = [2, 0, 1]
    with torch.inference_mode():
        want = [ours(torch.tensor([p + n]))[0, len(p):] for p, n in zip(prefixes, news)]
        for model in (ours, InferenceModel(load_weights(folder))):
            cache, alone = (KVCache(model.config, 3, 16) for _ in range(2))
            for p, n, s in zip(prefixes, news, slots):
                if p:
                    model(torch.tensor([p]), Packed([s], [0], [len(p)]), cache)
                model(torch.tensor([p + n]), Packed([s], [0], [len(p + n)]), alone)
            packed = Packed(slots, [len(p) for p in prefixes], [len(n) for n in news])
            h = model.forward_hidden(torch.tensor([sum(news, [])]), packed, cache)[0]
            got = model.project(h)
            for i, (p, n, s) in enumerate(zip(prefixes, news, slots)):
                o = packed.offsets[i]
                torch.testing.assert_close(got[o:o + len(n)], want[i], atol=1e-5, rtol=1e-5)
                end = len(p) + len(n)
                torch.testing.assert_close(cache.k[:, s, :, :end], alone.k[:, s, :, :end], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(cache.v[:, s, :, :end], alone.v[:, s, :, :end], atol=1e-5, rtol=1e-5)
            with pytest.raises(IndexError, match="KV cache holds"):
                model.forward_hidden(torch.tensor([[1] * 12]), Packed([0], [5], [12]), cache)
