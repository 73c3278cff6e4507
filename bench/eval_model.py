"""Score model folders on held-out data they never trained on, side by side.

    python bench/eval_model.py models/lmstudio-lite-tiny ../shared/data/models/stories260K [--n 100] [--json OUT]

- bits per byte on the first 300 paragraphs of tinystories_valid_sample.txt
  (tokenizer-independent: summed next-token NLL in bits / UTF-8 bytes)
- translation BLEU and chrF, each direction, on held-out Tatoeba pairs (recipes/heldout.py); the
  reply is cut at its first line break, as the Translate tab cuts it
- summarization ROUGE-L and chrF: one-sentence summaries of held-out TinyStories
  paragraphs (reference: the lead sentence, templated) and QMSum validation spans.
  The story references mostly open alike ("Once upon a time, there was ..."), so the
  same line for every text scores well: the constant baseline and how many different
  summaries a model wrote are printed beside the scores
- the same probe prompts every time, greedy
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "bench")]

from heldout import lead_sentence, split_pairs, summary_pairs, valid_paragraphs  # noqa: E402
from metrics import chrf, corpus_bleu, rouge_l  # noqa: E402

from lmstudio_lite import load_model  # noqa: E402
from lmstudio_lite.services.tasks.translate import cut_at_stop, piece_stop  # noqa: E402

PROBES = [
    "Once upon a time",
    [{"role": "user", "content": "Tell me a story."}],
    [{"role": "user", "content": "Translate English to French:\nI like my little dog."}],
    [{"role": "user", "content": "Translate French to English:\nJe suis très content."}],
    [{"role": "user", "content": "Summarize in one sentence:\nTom had a red ball. He played with it all day in "
                                 "the park. At night he was tired and went to bed happy."}],
]
DIRECTIONS = [("translation_en_fr.tsv", "English", "French"), ("translation_en_de.tsv", "English", "German")]
CODES = {"English": "en", "French": "fr", "German": "de"}


@torch.inference_mode()
def bits_per_byte(m, paragraphs) -> float:
    tok = m.tokenizer
    lead = tok.bos_id if tok.bos_id is not None else (tok.eos_ids[0] if tok.eos_ids else None)
    bits = nbytes = 0.0
    for p in paragraphs:
        ids = tok.encode(p, add_special_tokens=False)
        ctx = ([lead] if lead is not None else []) + ids
        ctx = ctx[: m.context_length]
        logits = m.logits(torch.tensor([ctx]))[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        targets = torch.tensor(ctx[1:])
        bits += -logp[torch.arange(len(targets)), targets].sum().item() / math.log(2)
        nbytes += len(tok.decode(ctx[1:] if lead is not None else ctx).encode("utf-8"))
    return bits / nbytes


def answer(m, user: str, max_new: int = 64) -> str:
    msgs = [{"role": "user", "content": user}]
    try:
        return "".join(m.generate(msgs, max_new_tokens=max_new, temperature=0, on_overflow="truncate")).strip()
    except ValueError:
        return ""


def translation(m, user: str, source: str) -> str:
    """The reply cut where the Translate tab cuts it: chat models such as SmolLM2 go on after the
    sentence ("\n\nIn this context, ..."), which the app never shows."""
    return cut_at_stop(answer(m, user), piece_stop(source))[0].strip()


def translation_scores(m, n) -> dict:
    out = {}
    for name, src, tgt in DIRECTIONS:
        _, held = split_pairs(name)
        held = held[:n]
        for a, b, pairs in ((src, tgt, held), (tgt, src, [(y, x) for x, y in held])):
            hyps = [translation(m, f"Translate {a} to {b}:\n{s}", s) for s, _ in pairs]
            refs = [r for _, r in pairs]
            out[f"{CODES[a]}->{CODES[b]}"] = {"bleu": corpus_bleu(hyps, refs), "chrf": chrf(hyps, refs),
                                                        "example": hyps[0] if hyps else ""}
    return out


CONSTANT_SUMMARY = "Once upon a time, there was a little girl named Lily."  # says nothing of the text


def story_pairs(n) -> tuple[list[str], list[str]]:
    paras = [p for p in valid_paragraphs()[300:] if p.count(". ") >= 2 and len(p) < 900][:n]
    return paras, [lead_sentence(p) for p in paras]


def constant_baseline(n) -> dict:
    """What the story metric gives one fixed sentence for every text: the score to beat."""
    _, refs = story_pairs(n)
    hyps = [CONSTANT_SUMMARY] * len(refs)
    return {"rougeL": rouge_l(hyps, refs), "chrf": chrf(hyps, refs)}


def summary_scores(m, n) -> dict:
    paras, refs = story_pairs(n)
    hyps = [answer(m, f"Summarize in one sentence:\n{p}", 48) for p in paras]
    qms = [(d[:1500], s) for d, s in summary_pairs("val")[: max(n // 4, 5)]]
    qh = [answer(m, f"Summarize in one sentence:\n{d}", 64) for d, _ in qms]
    return {"stories-lead": {"rougeL": rouge_l(hyps, refs), "chrf": chrf(hyps, refs),
                             "distinct": len(set(hyps)), "of": len(hyps)},
            "qmsum-val": {"rougeL": rouge_l(qh, [s for _, s in qms]), "chrf": chrf(qh, [s for _, s in qms])}}


def probes(m) -> list[str]:
    outs = []
    for p in PROBES:
        try:
            outs.append("".join(m.generate(p, max_new_tokens=48, temperature=0)).strip())
        except ValueError as e:
            outs.append(f"[error: {e}]")
    return outs


def evaluate(path, n) -> dict:
    m = load_model(path, device="cpu", dtype="float32")
    return {"model": str(path), "parameters": m.config.num_parameters(),
            "bits_per_byte": bits_per_byte(m, valid_paragraphs(300)),
            "translation": translation_scores(m, n), "summarization": summary_scores(m, n), "probes": probes(m)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--n", type=int, default=100, help="held-out pairs per translation direction")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = [evaluate(mp, args.n) for mp in args.models]
    names = [Path(r["model"]).name for r in results]
    print(f"{'metric':28}" + "".join(f"{n:>24}" for n in names))
    print(f"{'parameters':28}" + "".join(f"{r['parameters']:>24,}" for r in results))
    print(f"{'bits/byte (TinyStories val)':28}" + "".join(f"{r['bits_per_byte']:>24.3f}" for r in results))
    for d in results[0]["translation"]:
        for k in ("bleu", "chrf"):
            print(f"{d + ' ' + k:28}" + "".join(f"{r['translation'][d][k]:>24.1f}" for r in results))
    for s in results[0]["summarization"]:
        for k in ("rougeL", "chrf"):
            print(f"{s + ' ' + k:28}" + "".join(f"{r['summarization'][s][k]:>24.1f}" for r in results))
    print(f"{'stories-lead distinct':28}" + "".join(
        f"{r['summarization']['stories-lead']['distinct']:>17} of {r['summarization']['stories-lead']['of']:<3}"
        for r in results))
    base = constant_baseline(args.n)
    print(f"{'stories-lead, one fixed line':28}{base['rougeL']:>17.1f} ROUGE-L {base['chrf']:.1f} chrF "
          f"({CONSTANT_SUMMARY!r} for every text)")
    for r in results:
        print(f"\nprobes, {Path(r['model']).name}:")
        for prompt, out in zip(PROBES, r["probes"]):
            shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            print(f"  {shown!r}\n    -> {out!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
