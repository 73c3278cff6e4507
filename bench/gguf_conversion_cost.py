"""What converting a GGUF's other quantization types at load costs, in perplexity.

For each file: perplexity with every tensor decoded by gguf's reference dequantizer (what the
file's numbers mean, ``as_float``) against perplexity as we run it (Q8_0/Q4_0/Q4_1 kept, other
types converted: see checkpoints/gguf_weights.py). The difference is the conversion's cost alone.

Make the files with llama.cpp, e.g. from the SmolLM2 Q4_1 file:
    llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf smol-Q6_K.gguf Q6_K
    python bench/gguf_conversion_cost.py smol-*.gguf [--tokens 1024]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from shared_data import SHARED_DATA  # noqa: E402

from lmstudio_lite.checkpoints.gguf_weights import load_gguf  # noqa: E402


def perplexity(model, ids: list[int], window: int) -> float:
    """exp(mean next-token NLL) over consecutive windows (no overlap)."""
    nll, count = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[s:s + window + 1]])
            logits = model(chunk[:, :-1]).float()
            nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    text = (SHARED_DATA / "tinystories_valid_sample.txt").read_text(encoding="utf-8")
    print("| file | tensor types | converted | ppl as the file means | ppl as we run it | cost |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.files:
        ref = load_gguf(path, as_float=True)
        ids = ref.tokenizer.encode(text[:args.tokens * 8])[:args.tokens + 1]
        want = perplexity(ref.model, ids, args.window)
        del ref
        ours = load_gguf(path)
        got = perplexity(ours.model, ids, args.window)
        types = ", ".join(f"{k} {v}" for k, v in sorted(ours.report.tensor_types.items()))
        conv = ", ".join(f"{k}->{v}" for k, v in ours.report.conversions.items()) or "none"
        print(f"| {path.name} | {types} | {conv} | {want:.3f} | {got:.3f} | {100 * (got / want - 1):+.2f}% |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
