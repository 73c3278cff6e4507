"""Weight formats on one model folder: perplexity, weight memory, bytes a decode step reads, load times.

    python bench/quant.py [FOLDER] [--n 300] [--shape-only]

- perplexity per token on the first N paragraphs of tinystories_valid_sample.txt, for f32 and
  each quantized format with the head Q8_0 (the default) or kept float;
- the bytes one decode step streams (every block weight and the head; the embedding is one row);
- load_model times: float, quantize-and-cache, cached (a throwaway cache folder);
- SmolLM2-135M's shape with random weights (``--shape-only``: this alone): quantize time, step bytes,
  prefill and decode speed of the PyTorch path (dequantize + GEMM; the native kernels replace it).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]

from heldout import valid_paragraphs  # noqa: E402

from lmstudio_lite.checkpoints.folder import load_weights, read_config  # noqa: E402
from lmstudio_lite.checkpoints.tokenizer import Tokenizer  # noqa: E402
from lmstudio_lite.model.config import ModelConfig  # noqa: E402
from lmstudio_lite.model.inference import InferenceModel  # noqa: E402
from lmstudio_lite.model.quant import QTYPES, QuantLinear, quantize_model  # noqa: E402
from lmstudio_lite.model.transformer import Transformer  # noqa: E402

STORIES = ROOT.parent / "shared" / "data" / "models" / "stories260K"


@torch.no_grad()
def perplexity(model, tok, paragraphs) -> float:
    nll = count = 0.0
    for p in paragraphs:
        ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(p, add_special_tokens=False)
        ids = torch.tensor([ids[: model.config.max_seq_len]])
        logp = torch.log_softmax(model(ids)[0, :-1].float(), -1)
        nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def step_bytes(model) -> int:
    """Bytes of weights one decode step reads: block linears and the head (float or blocks)."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            total += m.blocks.numel()
        elif hasattr(m, "d_in") and hasattr(m, "weight"):
            total += m.weight.numel() * m.weight.element_size()
    if model.head is None:  # tied float head: the whole embedding, read as the head
        total += model.tok_emb.weight.numel() * model.tok_emb.weight.element_size()
    return total


def format_table(folder: Path, n: int):
    cfg, _ = read_config(folder)
    tok = Tokenizer.from_folder(folder)
    paras = valid_paragraphs(n)
    print(f"{folder.name}: perplexity on {len(paras)} paragraphs, bytes one decode step reads")
    print(f"{'format':8} {'head':5} {'ppl':>8} {'step MB':>8}")
    rows = [("f32", None)] + [(q, h) for q in QTYPES for h in ("q8_0", None)]
    for qtype, head in rows:
        model = load_weights(folder, cfg, device="cpu", dtype=torch.float32)
        if qtype != "f32":
            quantize_model(model, qtype, head=head)
        print(f"{qtype:8} {head or 'f32':5} {perplexity(InferenceModel(model), tok, paras):8.4f} "
              f"{step_bytes(model) / 1e6:8.3f}")


def load_times(folder: Path, qtype: str = "q8_0"):
    from lmstudio_lite import load_model

    with tempfile.TemporaryDirectory() as home:
        os.environ["LMSTUDIO_LITE_HOME"] = home
        for label, quant in (("float", None), ("quantize + cache", qtype), ("cached", qtype)):
            t = time.perf_counter()
            m = load_model(folder, device="cpu", dtype="float32", quant=quant)
            print(f"load_model {label:17} {time.perf_counter() - t:6.2f} s  ({m.info()['quant']}, "
                  f"{m.info()['weights_bytes'] / 1e6:.1f} MB of weights)")
        del os.environ["LMSTUDIO_LITE_HOME"]


@torch.no_grad()
def python_path_times(model, cfg) -> tuple[float, float]:
    """(prefill tok/s of 128 tokens, decode tok/s) through the PyTorch path: the reference that
    dequantizes every weight per call, which the native kernels replace for decode."""
    from lmstudio_lite.model.kv_cache import KVCache

    cache = KVCache(cfg, 1, 160, "cpu", torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    model(ids, 0, cache, last_only=True)
    prefill = 128 / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(8):
        model(ids[:, i:i + 1], 128 + i, cache)
    return prefill, 8 / (time.perf_counter() - t)


def shape_table():
    """SmolLM2-135M's shape with random weights: quantize time, step bytes, PyTorch-path speed."""
    cfg = ModelConfig(family="llama", vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, d_model=576,
                      d_ff=1536, max_seq_len=2048)
    print(f"SmolLM2-135M shape, random weights, {torch.get_num_threads()} threads")
    print(f"{'format':8} {'head':5} {'quantize s':>10} {'step MB':>8} {'prefill tok/s':>13} {'decode tok/s':>12}")
    for qtype, head in [("f32", None)] + [(q, h) for q in QTYPES for h in ("q8_0", None)]:
        torch.manual_seed(0)
        model = Transformer(cfg)  # Linear's own init: normal(0, 0.02)
        t = time.perf_counter()
        if qtype != "f32":
            quantize_model(model, qtype, head=head)
        seconds = time.perf_counter() - t
        prefill, decode = python_path_times(model.eval(), cfg)  # the Transformer's own forward
        print(f"{qtype:8} {head or 'f32':5} {seconds:10.2f} {step_bytes(model) / 1e6:8.1f} {prefill:13.0f} "
              f"{decode:12.1f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder", nargs="?", default=str(STORIES))
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--shape-only", action="store_true")
    args = p.parse_args()
    if not args.shape_only:
        format_table(Path(args.folder), args.n)
        load_times(Path(args.folder))
    shape_table()


if __name__ == "__main__":
    main()
