"""Perplexity of our engine beside llama.cpp's ``llama-perplexity`` on the same GGUF files.

    python bench/perplexity.py [--n 300] [--ctx 512] [--chunks N] [--formats f32 bf16 q8_0 q4_1 q4_0]

The text is the first N paragraphs of ../shared/data/tinystories_valid_sample.txt joined by
blank lines, written to a file that both engines read. Each format's GGUF is made from the
SmolLM2-135M-Instruct file by ``llama-quantize`` (bench/peer_llamacpp.py: make_formats).

Ours follows llama-perplexity's method exactly (tools/perplexity/perplexity.cpp, ``perplexity``),
so that the two figures are comparable:
- the whole text is tokenized once, with BOS only when the vocabulary's ``add_bos_token`` says so;
- it is cut into ``len(tokens) // ctx`` chunks of ``ctx`` tokens (the tail is dropped; ``--chunks``
  keeps the first N), each run from an empty cache; when ``add_bos`` the chunk's first token is
  replaced by BOS;
- only the second half of each window is scored: the logits at positions ctx/2 .. ctx-2 against
  the tokens that follow them, ``ctx - ctx/2 - 1`` tokens per chunk;
- perplexity = exp(total NLL / scored tokens).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "bench")]

import peer_llamacpp  # noqa: E402
from heldout import valid_paragraphs  # noqa: E402

from lmstudio_lite.checkpoints.gguf_file import open_gguf  # noqa: E402
from lmstudio_lite.checkpoints.gguf_tokenizer import tokenizer_from_gguf  # noqa: E402
from lmstudio_lite.model import KVCache  # noqa: E402


def chunks(tokens: list[int], ctx: int, bos: int | None, limit: int | None = None) -> list[list[int]]:
    """llama-perplexity's windows: consecutive, non-overlapping, the first token BOS when the
    vocabulary adds one."""
    n = len(tokens) // ctx
    if limit is not None:
        n = min(n, limit)
    out = []
    for i in range(n):
        window = tokens[i * ctx:(i + 1) * ctx]
        if bos is not None:
            window = [bos] + window[1:]
        out.append(window)
    return out


@torch.inference_mode()
def ours(model, windows: list[list[int]], kv_dtype: torch.dtype | None = None, kv_chunk: int = 64) -> float:
    """exp(mean NLL) over the second half of every window, as llama-perplexity scores them. With
    ``kv_dtype``, each window goes through a KV cache of that type in chunks of ``kv_chunk`` tokens
    (each chunk attends over the K/V its predecessors left there, as the scheduler prefills)."""
    nll, count = 0.0, 0
    for window in windows:
        ctx = len(window)
        first = ctx // 2
        ids = torch.tensor([window])
        if kv_dtype is None:
            logits = model(ids)[0, first:ctx - 1].float()
        else:
            cache = KVCache(model.config, 1, ctx, dtype=kv_dtype)
            logits = torch.cat([model(ids[:, at:at + kv_chunk], at, cache)[0] for at in range(0, ctx, kv_chunk)])
            logits = logits[first:ctx - 1].float()
        logp = torch.log_softmax(logits, -1)
        nll -= logp.gather(-1, ids[0, first + 1:, None]).sum().item()
        count += ctx - first - 1
    return math.exp(nll / count)


def theirs(bin_dir: Path, gguf: Path, text_file: Path, ctx: int, chunks_n: int | None, threads: int) -> float:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", str(gguf), "-f", str(text_file), "-c", str(ctx),
           "-t", str(threads), *peer_llamacpp.safe_args(bin_dir)]
    if chunks_n is not None:
        cmd += ["--chunks", str(chunks_n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"llama-perplexity failed with exit status {proc.returncode}: {out[-600:]}")
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"no final estimate in llama-perplexity's output: {out[-600:]}")
    return float(m.group(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300, help="paragraphs of the TinyStories validation sample")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=None, help="score only the first N windows (both engines)")
    p.add_argument("--formats", nargs="+", default=peer_llamacpp.FORMATS)
    p.add_argument("--gguf", default=str(peer_llamacpp.DEFAULT_GGUF), help="the file the formats are made from")
    p.add_argument("--llama-bin", default=None, help="llama.cpp's build/bin (default: peer_llamacpp.find_bin())")
    p.add_argument("--workdir", default="/tmp/lsl-bench-gguf")
    p.add_argument("--kv-dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="ours through a KV cache of this type, 64 tokens at a time (llama.cpp keeps float16)")
    args = p.parse_args()
    bin_dir = Path(args.llama_bin) if args.llama_bin else peer_llamacpp.find_bin()
    files = peer_llamacpp.make_formats(Path(args.gguf), bin_dir, Path(args.workdir), args.formats)
    threads = torch.get_num_threads()

    # llama-perplexity drops one trailing newline from the file; none is written, so both read the same text
    text = "\n\n".join(valid_paragraphs(args.n))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write(text)
    text_file = Path(f.name)
    try:
        tok = tokenizer_from_gguf(open_gguf(files[args.formats[0]]))
        tokens = tok.encode(text)  # the vocabulary's own BOS rule, as llama-perplexity's tokenize(..., true)
        bos = tok.bos_id if tokens and tokens[0] == tok.bos_id else None
        windows = chunks(tokens, args.ctx, bos, args.chunks)
        print(f"{args.n} paragraphs, {len(tokens)} tokens, {len(windows)} windows of {args.ctx} "
              f"(second halves scored), {threads} threads, llama.cpp {bin_dir}", flush=True)
        print("| format | ours ppl | llama.cpp ppl | difference | ours s | llama.cpp s |")
        print("| --- | --- | --- | --- | --- | --- |", flush=True)
        worst = 0.0
        for fmt in args.formats:
            model = peer_llamacpp.load_ours(files[fmt], torch.bfloat16 if fmt == "bf16" else torch.float32)
            t = time.perf_counter()
            a = ours(model, windows, getattr(torch, args.kv_dtype) if args.kv_dtype else None)
            t_ours = time.perf_counter() - t
            del model
            t = time.perf_counter()
            b = theirs(bin_dir, files[fmt], text_file, args.ctx, args.chunks, threads)
            t_theirs = time.perf_counter() - t
            worst = max(worst, abs(a / b - 1))
            print(f"| {fmt} | {a:.4f} | {b:.4f} | {a / b - 1:+.2%} | {t_ours:.0f} | {t_theirs:.0f} |", flush=True)
        print(f"largest difference {worst:.2%} ({'within' if worst <= 0.01 else 'OUTSIDE'} 1%)")
    finally:
        text_file.unlink()


if __name__ == "__main__":
    main()
