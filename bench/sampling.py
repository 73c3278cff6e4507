"""Sampling one token on the CPU: our sampler against transformers' logits warpers.

    python bench/sampling.py            # vocabularies of 4k, 49k and 152k; plain, top-p, top-k + top-p
    python bench/sampling.py --quick    # fewer repeats: checks the script runs

Both sides get the same logits, shaped like a language model's (a Zipf-like
fall-off), and the same settings. Transformers applies TemperatureLogitsWarper,
TopKLogitsWarper and TopPLogitsWarper, then ``torch.multinomial``, as its
``generate`` does. Prints microseconds per token and ours/transformers.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from lmstudio_lite.generation.sampling import SamplingParams, sample  # noqa: E402
from timing import seconds_per_call  # noqa: E402

CASES = [("temperature 0.8", dict(temperature=0.8)),
         ("top-p 0.9", dict(temperature=0.7, top_p=0.9)),
         ("top-k 40 + top-p 0.95", dict(temperature=0.8, top_k=40, top_p=0.95))]


def lm_like_logits(V: int, g: torch.Generator) -> torch.Tensor:
    """[1, V]: log-probabilities falling off like word frequencies, in a random order."""
    ranks = torch.arange(1, V + 1, dtype=torch.float32)
    logits = -1.1 * ranks.log() + 0.3 * torch.randn(V, generator=g)
    return logits[torch.randperm(V, generator=g)][None]


def hf_sampler(kw: dict):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList([TemperatureLogitsWarper(kw["temperature"])])
    if kw.get("top_k"):
        warpers.append(TopKLogitsWarper(kw["top_k"]))
    if kw.get("top_p", 1.0) < 1.0:
        warpers.append(TopPLogitsWarper(kw["top_p"]))
    ids = torch.zeros(1, 1, dtype=torch.long)

    def draw(logits, g):
        return torch.multinomial(warpers(ids, logits).softmax(-1), 1, generator=g)
    return draw


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n = 5 if args.quick else 200
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; microseconds per sampled token")
    for V in (4096, 49152, 151936):
        g = torch.Generator().manual_seed(0)
        logits = lm_like_logits(V, g)
        for name, kw in CASES:
            params = SamplingParams(**kw)
            draw = hf_sampler(kw)
            ours = 1e6 * seconds_per_call(lambda: sample(logits, params, g), n, warmup=5)
            theirs = 1e6 * seconds_per_call(lambda: draw(logits, g), n, warmup=5)
            print(f"vocab {V:6}  {name:22} ours {ours:7.0f}  transformers {theirs:7.0f}  "
                  f"ours/transformers speed {theirs / ours:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
