"""Text-similarity metrics for bench/eval_model.py (dependency-free).

corpus_bleu follows sacreBLEU's defaults (4-gram, uniform weights, brevity
penalty, a 13a-like tokenizer that splits punctuation); chrf follows chrF2
(character 6-grams, beta 2, whitespace removed); rouge_l is the F-measure of
the longest common subsequence over lowercased word tokens.
"""
from __future__ import annotations

import math
import re
from collections import Counter

_PUNCT = re.compile(r"([^\w\s])")


def _tok(s: str) -> list[str]:
    return _PUNCT.sub(r" \1 ", s).split()


def _ngrams(words: list, n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hyps: list[str], refs: list[str]) -> float:
    """BLEU in [0, 100] over the whole corpus."""
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs):
        hw, rw = _tok(h), _tok(r)
        hyp_len, ref_len = hyp_len + len(hw), ref_len + len(rw)
        for n in range(1, 5):
            hc, rc = _ngrams(hw, n), _ngrams(rw, n)
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(hw) - n + 1, 0)
    if hyp_len == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def chrf(hyps: list[str], refs: list[str], n: int = 6, beta: float = 2.0) -> float:
    """Corpus chrF in [0, 100] (statistics summed over sentences, then averaged over n)."""
    scores = []
    for k in range(1, n + 1):
        m = th = tr = 0
        for h, r in zip(hyps, refs):
            hc = Counter(h.replace(" ", "")[i:i + k] for i in range(len(h.replace(" ", "")) - k + 1))
            rc = Counter(r.replace(" ", "")[i:i + k] for i in range(len(r.replace(" ", "")) - k + 1))
            m += sum(min(c, rc[g]) for g, c in hc.items())
            th, tr = th + sum(hc.values()), tr + sum(rc.values())
        p = m / th if th else 0.0
        rcl = m / tr if tr else 0.0
        scores.append(0.0 if p + rcl == 0 else (1 + beta ** 2) * p * rcl / (beta ** 2 * p + rcl))
    return 100 * sum(scores) / len(scores)


def _lcs(a: list, b: list) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps: list[str], refs: list[str]) -> float:
    """Mean sentence-level ROUGE-L F1 in [0, 100]."""
    total = 0.0
    for h, r in zip(hyps, refs):
        hw, rw = _tok(h.lower()), _tok(r.lower())
        lcs = _lcs(hw, rw)
        if lcs:
            p, rc = lcs / len(hw), lcs / len(rw)
            total += 2 * p * rc / (p + rc)
    return 100 * total / max(len(hyps), 1)
