"""Sample TinyStories-style text from the real stories260K model (MIT), to widen
the story data for the bundled model beyond the 2 MB TinyStories sample.

    python recipes/default_model/generate_stories.py OUT.txt --stories 20000

Each story starts from BOS and ends at EOS or 256 tokens; stories are separated
by a line ``<|endoftext|>`` like tinystories_train_sample.txt. Seeded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lmstudio_lite.checkpoints.folder import load_weights  # noqa: E402
from lmstudio_lite.checkpoints.tokenizer import Tokenizer  # noqa: E402
from lmstudio_lite.generation.sampling import SamplingParams, sample  # noqa: E402
from lmstudio_lite.model import KVCache  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@torch.inference_mode()
def sample_batch(model, bos: int, eos: int, batch: int, max_len: int, params, gen) -> list[list[int]]:
    cache = KVCache(model.config, batch, max_len)
    tok = torch.full((batch, 1), bos, dtype=torch.long)
    out = torch.zeros((batch, max_len - 1), dtype=torch.long)
    for pos in range(max_len - 1):
        logits = model(tok, pos, cache)[:, -1]
        tok = sample(logits, params, gen).view(batch, 1)
        out[:, pos] = tok[:, 0]
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--stories", type=int, default=20000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--model", default=str(SHARED / "models" / "stories260K"))
    args = p.parse_args()
    model = load_weights(args.model).eval()
    tok = Tokenizer.from_folder(args.model)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p)
    gen = torch.Generator().manual_seed(args.seed)
    done, t0 = 0, time.time()
    with open(args.out, "w", encoding="utf-8") as f:
        while done < args.stories:
            for ids in sample_batch(model, tok.bos_id, tok.eos_ids[0], args.batch, args.max_len, params, gen):
                text = tok.decode(ids).strip()
                if len(text) > 80 and "\ufffd" not in text:
                    f.write(text + "\n<|endoftext|>\n")
                    done += 1
            print(f"{done} stories, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
