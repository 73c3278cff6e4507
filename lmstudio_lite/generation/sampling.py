"""Choosing the next token from logits: pure functions, randomness passed in."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..messages import Message


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each new token. The defaults turn every filter off and decode greedily."""

    temperature: float = 0.0
    """0 means greedy (argmax, no randomness); higher flattens the distribution."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 turns it off."""
    top_p: float = 1.0
    """Nucleus: keep the smallest set of tokens whose probability adds up to at least top_p; 1.0 is off."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely one; 0.0 is off."""
    repetition_penalty: float = 1.0
    """Hugging Face semantics: >1 discourages tokens already in the prompt or the output; 1.0 is off."""
    seed: int | None = None
    """The same seed with the same prompt and parameters gives the same output; None picks one at random."""

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(Message("gen.err_not_finite", name=name, got=repr(value)))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(Message("gen.err_top_k_type", got=repr(self.top_k)))
        if self.temperature < 0:
            raise ValueError(Message("gen.err_temperature", got=self.temperature))
        if self.top_k < 0:
            raise ValueError(Message("gen.err_top_k", got=self.top_k))
        if not 0 < self.top_p <= 1:
            raise ValueError(Message("gen.err_top_p", got=self.top_p))
        if not 0 <= self.min_p < 1:
            raise ValueError(Message("gen.err_min_p", got=self.min_p))
        if self.repetition_penalty <= 0:
            raise ValueError(Message("gen.err_repetition_penalty", got=self.repetition_penalty))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise ValueError(Message("gen.err_seed", got=repr(self.seed)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> ids [B] long: each row's first largest entry (NaN counts as largest, as in
    torch). On the CPU through numpy: torch's argmax splits a few rows over its thread pool, which
    costs more than the work (8 x 49k: 6 ms against 55 us, 8 x 4k: 63 against 3.5 us, 2 busy cores)."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    return torch.from_numpy(logits.detach().float().numpy().argmax(axis=1)).to(torch.long)


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V], prev_ids [B, N] -> new logits [B, V]; seen tokens: positive / penalty, negative * penalty."""
    seen = logits.gather(1, prev_ids)  # [B, N]; repeats of an id gather the same value, so scatter is consistent
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, prev_ids, seen)


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th token survive


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # A token is dropped once the tokens above it already reach p; the top token always stays.
    drop_sorted = mass_before >= p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    floor = probs.max(dim=-1, keepdim=True).values * min_p  # [B, 1]
    return logits.masked_fill(probs < floor, float("-inf"))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
           prev_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row.

    logits [B, V] (any float dtype; computed in fp32), prev_ids [B, N] long (the prompt and the
    output so far, for the repetition penalty) -> ids [B] long, on the logits' device.
    Order: repetition penalty, then argmax when temperature is 0, else temperature, top-k, top-p,
    min-p and a draw from ``generator``. The input is not modified. On a GPU it never syncs
    with the host; on the CPU it works on the surviving candidates only (see below).
    """
    logits = logits.float()
    if params.repetition_penalty != 1.0 and prev_ids is not None and prev_ids.numel():
        logits = apply_repetition_penalty(logits, prev_ids.to(torch.long), params.repetition_penalty)
    if params.greedy:
        return argmax_rows(logits)
    logits = logits / params.temperature
    if logits.device.type == "cpu":
        return _sample_candidates(logits, params, generator)
    if params.top_k > 0:
        logits = _top_k(logits, params.top_k)
    if params.top_p < 1.0:
        logits = _top_p(logits, params.top_p)
    if params.min_p > 0.0:
        logits = _min_p(logits, params.min_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def tempered_only(params: SamplingParams) -> bool:
    """Sampled at a temperature with no filter and no penalty (what an OpenAI client asks by default):
    ``sample_tempered`` takes such rows together."""
    return (not params.greedy and params.top_k == 0 and params.top_p >= 1.0 and params.min_p == 0.0
            and params.repetition_penalty == 1.0)


def sample_tempered(logits: torch.Tensor, temperatures: list[float],
                    generators: list[torch.Generator | None]) -> torch.Tensor:
    """CPU rows at their own temperature, no filter: logits [B, V] -> ids [B], row b drawn from
    ``generators[b]``. Row b gets exactly what ``sample(logits[b:b+1], SamplingParams(temperature=t_b),
    generators[b])`` gives (the same row-wise operations), in one softmax and one cumsum for all rows."""
    scaled = torch.cat([logits[b:b + 1].float() / t for b, t in enumerate(temperatures)])  # [B, V]
    return _draw(scaled.softmax(dim=-1), generators)


def _draw(probs: torch.Tensor, generator: torch.Generator | None | list) -> torch.Tensor:
    """One index per row of probs [B, M] (need not sum to 1), by inverting the CDF:
    on the CPU ``torch.multinomial`` costs 1.3 ms over a 49k vocabulary, this ~0.1 ms.
    ``generator``: one for every row, or a list of one per row."""
    cdf = probs.cumsum(dim=-1)  # [B, M]
    if isinstance(generator, list):
        u = torch.cat([torch.rand(1, 1, generator=g, device=probs.device) for g in generator])
    else:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    u = u * cdf[:, -1:]
    # right=True: a zero-probability entry (cdf equal to its predecessor's) can never be hit.
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def _sample_candidates(logits: torch.Tensor, params: SamplingParams, generator) -> torch.Tensor:
    if params.top_k == 0 and params.top_p >= 1.0 and params.min_p == 0.0:
        return _draw(logits.softmax(dim=-1), generator)
    ids, probs = candidate_distribution(logits, params)
    return ids.gather(1, _draw(probs, generator)[:, None]).squeeze(-1)


def candidate_distribution(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, m], probs [B, m]): the filter chain's final distribution (top-k, top-p, min-p on
    temperature-scaled logits [B, V]) over the few tokens that can survive it, found without
    sorting the whole vocabulary (top-p over 49k tokens took 5.7 ms a token on the CI CPU, 23 ms
    over 152k). Reading a count back to the host is free on the CPU, where this is used."""
    probs = logits.softmax(dim=-1)  # [B, V]
    V = logits.shape[-1]
    if params.top_k > 0:
        kth = logits.topk(min(params.top_k, V), dim=-1).values[:, -1:]
        m = int((logits >= kth).sum(dim=-1).max())  # ties with the k-th token survive
    elif params.top_p < 1.0:
        m = min(V, 128)  # grown until the candidates hold p of the mass in every row
        top = probs.topk(m, dim=-1)
        while m < V and bool((top.values.sum(dim=-1) < params.top_p).any()):
            m = min(V, m * 8)
            top = probs.topk(m, dim=-1)
    else:  # min-p alone
        m = int((probs >= probs.max(dim=-1, keepdim=True).values * params.min_p).sum(dim=-1).max())
    if params.top_k == 0 and params.top_p < 1.0:
        ids = top.indices
        cand = logits.gather(1, ids)
    else:
        cand, ids = logits.topk(m, dim=-1)  # [B, m], most likely first
    if params.top_k > 0:  # m is the widest row's count: narrower rows drop their extras here
        cand = cand.masked_fill(cand < kth, float("-inf"))
    if params.top_p < 1.0:
        # After top-k, top-p sees the renormalised top-k distribution; alone, the full one.
        p = cand.softmax(dim=-1) if params.top_k > 0 else probs.gather(1, ids)
        drop = (p.cumsum(dim=-1) - p) >= params.top_p
        drop[:, 0] = False
        cand = cand.masked_fill(drop, float("-inf"))
    if params.min_p > 0.0:
        cand = _min_p(cand, params.min_p)
    return ids, cand.softmax(dim=-1)
