"""Batch-1 matmul kernels on this CPU: which entry point streams weights fastest.

    python bench/gemv.py                # GPT-2 and SmolLM2-135M decode shapes, float32 + bfloat16
    python bench/gemv.py --quick        # one small shape: checks the script runs

Two views, side by side for each kernel: one matrix timed alone (cache-warm,
so the GB/s can exceed DRAM), and a whole model's worth of matrices in a row
(the weights no longer fit any cache: this is what a decode step sees). The
choice in ``model/inference.py``'s ``InferenceModel`` follows the second: float32
keeps ``x @ W`` on [in, out]; bfloat16 stores [out, in] for ``torch.mv``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from timing import seconds_per_call  # noqa: E402

SHAPES = {  # d_model, layers, qkv out, d_ff (x2 when gated), vocab
    "gpt2": dict(C=768, L=12, qkv=2304, up=3072, down_in=3072, V=50257),
    "smollm": dict(C=576, L=30, qkv=960, up=3072, down_in=1536, V=49152),
}


def kernels(w_in_out: torch.Tensor, x: torch.Tensor) -> dict:
    """name -> zero-argument callable computing x @ w for one row."""
    w_out_in = w_in_out.t().contiguous()
    row = x[0]
    return {
        "x @ W [in,out]": lambda: x @ w_in_out,
        "F.linear [out,in]": lambda: F.linear(x, w_out_in),
        "torch.mv [out,in]": lambda: torch.mv(w_out_in, row),
    }


def model_matrices(s: dict) -> list[tuple[int, int]]:
    C = s["C"]
    return [(C, s["qkv"]), (C, C), (C, s["up"]), (s["down_in"], C)] * s["L"] + [(C, s["V"])]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GB/s of weight bytes streamed")
    for shape in args.shapes:
        s = SHAPES[shape]
        if args.quick:
            s = dict(C=64, L=2, qkv=192, up=256, down_in=256, V=512)
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            mats = [torch.randn(i, o, generator=g).to(dtype) for i, o in model_matrices(s)]
            xs = {i: torch.randn(1, i, generator=g).to(dtype) for i in {m.shape[0] for m in mats}}
            alone = {}
            for w in (mats[0], mats[3], mats[-1]):  # qkv, down, vocabulary head
                for name, fn in kernels(w, xs[w.shape[0]]).items():
                    s_call = seconds_per_call(fn, 3 if args.quick else 100, warmup=1)
                    alone.setdefault(name, []).append(w.numel() * w.element_size() / s_call / 1e9)
            chain = {}
            per_kernel = {name: [kernels(w, xs[w.shape[0]])[name] for w in mats] for name in alone}
            total = sum(w.numel() * w.element_size() for w in mats)
            for name, fns in per_kernel.items():
                chain[name] = total / seconds_per_call(lambda: [f() for f in fns], 1 if args.quick else 10, warmup=1) / 1e9
            dname = str(dtype).replace("torch.", "")
            for name in alone:
                a = " / ".join(f"{v:5.1f}" for v in alone[name])
                print(f"{shape:7} {dname:9} {name:19} alone (qkv/down/head) {a} GB/s   "
                      f"whole model {chain[name]:5.1f} GB/s ({total / 1e6:.0f} MB)", flush=True)
            del mats, per_kernel


if __name__ == "__main__":
    main()
