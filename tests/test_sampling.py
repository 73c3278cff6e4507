"""sample() and SamplingParams: each filter alone, seeds, and validation."""
import pytest
import torch

from lmstudio_lite.generation import SamplingParams, sample


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(batch=3, vocab=50, seed=0):
    return torch.randn(batch, vocab, generator=_gen(seed)) * 3


def test_greedy_is_argmax_and_does_not_touch_input():
    logits = _logits()
    before = logits.clone()
    out = sample(logits, SamplingParams(), None, None)
    assert out.dtype == torch.long and out.shape == (3,)
    assert torch.equal(out, logits.argmax(-1))
    assert torch.equal(logits, before)


def test_greedy_works_in_half_precision():
    logits = _logits().to(torch.bfloat16)
    assert torch.equal(sample(logits, SamplingParams()), logits.float().argmax(-1))


def test_top_k_1_equals_greedy():
    logits = _logits()
    params = SamplingParams(temperature=1.5, top_k=1)
    for seed in range(20):
        assert torch.equal(sample(logits, params, _gen(seed)), logits.argmax(-1))


def test_top_k_keeps_only_k_tokens():
    logits = _logits(batch=1, vocab=20)
    top3 = set(torch.topk(logits[0], 3).indices.tolist())
    params = SamplingParams(temperature=5.0, top_k=3)
    g = _gen(1)
    seen = {int(sample(logits, params, g)) for _ in range(300)}
    assert seen <= top3 and len(seen) == 3


def test_tiny_top_p_equals_greedy():
    logits = _logits()
    params = SamplingParams(temperature=1.0, top_p=1e-6)
    for seed in range(20):
        assert torch.equal(sample(logits, params, _gen(seed)), logits.argmax(-1))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    g = _gen(0)
    # 0.5 + 0.3 = 0.8 >= 0.8: tokens 0 and 1 only.
    seen = {int(sample(logits, SamplingParams(temperature=1.0, top_p=0.8), g)) for _ in range(400)}
    assert seen == {0, 1}
    # 0.5 + 0.3 < 0.85: token 2 joins; token 3 never does.
    seen = {int(sample(logits, SamplingParams(temperature=1.0, top_p=0.85), g)) for _ in range(400)}
    assert seen == {0, 1, 2}


def test_min_p_filters_unlikely_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    g = _gen(0)
    # floor = 0.5 * 0.4 = 0.2: only tokens 0 and 1 survive.
    seen = {int(sample(probs.log(), SamplingParams(temperature=1.0, min_p=0.4), g)) for _ in range(400)}
    assert seen == {0, 1}
    seen = {int(sample(probs.log(), SamplingParams(temperature=1.0), g)) for _ in range(2000)}
    assert seen == {0, 1, 2, 3}


def test_repetition_penalty_changes_the_choice():
    logits = torch.tensor([[2.0, 1.8, -1.0, 0.5]])
    prev = torch.tensor([[0, 0, 3]])  # token 0 seen (twice: penalised once, like Hugging Face)
    assert int(sample(logits, SamplingParams(), None, prev)) == 0
    assert int(sample(logits, SamplingParams(repetition_penalty=1.5), None, prev)) == 1


def test_repetition_penalty_matches_hugging_face_semantics():
    from lmstudio_lite.generation.sampling import apply_repetition_penalty
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert logits.tolist() == [[2.0, -2.0, 1.0, -1.0]]  # input untouched


def test_same_seed_same_samples_different_seed_different():
    logits = _logits(batch=4, vocab=100, seed=3) * 0.1  # nearly flat: lots of randomness
    params = SamplingParams(temperature=1.0)

    def draws(seed):
        g = _gen(seed)
        return torch.stack([sample(logits, params, g) for _ in range(25)])

    assert torch.equal(draws(7), draws(7))
    assert not torch.equal(draws(7), draws(8))


def test_filters_compose_and_always_leave_a_token():
    logits = _logits(batch=5, vocab=64)
    params = SamplingParams(temperature=0.7, top_k=10, top_p=0.5, min_p=0.3, repetition_penalty=1.3)
    prev = torch.randint(0, 64, (5, 12), generator=_gen(2))
    for seed in range(10):
        out = sample(logits, params, _gen(seed), prev)
        assert out.shape == (5,) and bool(((out >= 0) & (out < 64)).all())


@pytest.mark.parametrize("kwargs, word", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.2}, "top_p"),
    ({"min_p": 1.0}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"seed": -1}, "seed"),
])
def test_bad_params_raise_clear_value_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingParams(**kwargs)


def test_defaults_are_greedy_with_filters_off():
    p = SamplingParams()
    assert p.greedy and p.top_k == 0 and p.top_p == 1.0 and p.min_p == 0.0
    assert p.repetition_penalty == 1.0 and p.seed is None


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_p=0.9),
    SamplingParams(temperature=1.0, top_p=0.3),
    SamplingParams(temperature=1.0, top_k=5),
    SamplingParams(temperature=1.0, top_k=7, top_p=0.8),
    SamplingParams(temperature=1.0, min_p=0.05),
    SamplingParams(temperature=1.0, top_k=50, top_p=0.95, min_p=0.02),
])
def test_cpu_candidate_distribution_equals_the_full_filter_chain(params):
    """The CPU path (filters applied to the surviving candidates only) gives exactly the
    distribution of top-k, top-p and min-p applied over the whole vocabulary, ties included."""
    from lmstudio_lite.generation.sampling import _min_p, _top_k, _top_p, candidate_distribution

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 3000, generator=g) * 4
    if params.top_p == 1.0:  # where top-p cuts through a tie, any order of the tie is right
        logits[1, :40] = logits[1].max() + 1  # a row of ties at the top
        logits[2, 100:110] = logits[2].topk(5).values[-1]  # ties at the k-th value
    ref = logits.clone()
    if params.top_k:
        ref = _top_k(ref, params.top_k)
    if params.top_p < 1:
        ref = _top_p(ref, params.top_p)
    if params.min_p:
        ref = _min_p(ref, params.min_p)
    want = ref.softmax(-1)
    ids, probs = candidate_distribution(logits, params)
    got = torch.zeros_like(want).scatter_(1, ids, probs)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_cpu_draw_follows_the_probabilities_and_never_picks_a_zero():
    from lmstudio_lite.generation.sampling import _draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.0, 0.2]]).repeat(20000, 1)
    picks = _draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=5).float() / picks.numel()
    assert counts[1] == 0 and counts[3] == 0
    torch.testing.assert_close(counts[[0, 2, 4]], torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)


def test_rows_sampled_together_draw_what_each_row_draws_alone():
    """sample_tempered (the scheduler's batched pick at a temperature) gives every row, from its own
    generator, exactly the id that sample() gives that row alone, step after step."""
    from lmstudio_lite.generation.sampling import sample_tempered

    temps = [1.0, 0.7, 1.3, 1.0, 0.2]
    alone_gens = [_gen(s) for s in range(len(temps))]
    batch_gens = [_gen(s) for s in range(len(temps))]
    for step in range(20):
        logits = _logits(batch=len(temps), vocab=4096, seed=step)
        alone = [int(sample(logits[b:b + 1], SamplingParams(temperature=t), alone_gens[b])) for b, t in
                 enumerate(temps)]
        assert sample_tempered(logits, temps, batch_gens).tolist() == alone
