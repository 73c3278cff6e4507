"""Attention kernels on this CPU: SDPA against plain matmul + softmax (grouped queries).

    python bench/attention.py           # decode, prefill and a training step; float32 + bfloat16
    python bench/attention.py --quick   # small sizes: checks the script runs

``model.transformer.attention`` (SDPA) against ``attention_reference`` (matmul +
softmax), same inputs, microseconds per call and the ratio. Older torch builds
ran bf16 SDPA 1.3-4.4x slower than matmul + softmax here; the model uses SDPA
everywhere because this script shows it faster on the pinned torch.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from lmstudio_lite.model.transformer import attention, attention_reference  # noqa: E402
from timing import seconds_per_call  # noqa: E402

CASES = [  # name, B, H, KV, T (new tokens), L (keys), grad
    ("decode GPT-2", 1, 12, 12, 1, 200, False),
    ("decode SmolLM GQA", 1, 9, 3, 1, 200, False),
    ("decode batch 8", 8, 12, 12, 1, 200, False),
    ("prefill GPT-2 128", 1, 12, 12, 128, 128, False),
    ("prefill SmolLM 128", 1, 9, 3, 128, 128, False),
    ("train step 8x256", 8, 6, 6, 256, 256, True),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; microseconds per call (forward+backward for training)")
    for dtype in (torch.float32, torch.bfloat16):
        for name, B, H, KV, T, L, grad in CASES:
            if args.quick:
                B, T, L = 1, min(T, 8), min(L, 16)
            g = torch.Generator().manual_seed(0)
            q = torch.randn(B, H, T, 64, generator=g).to(dtype).requires_grad_(grad)
            k = torch.randn(B, KV, L, 64, generator=g).to(dtype).requires_grad_(grad)
            v = torch.randn(B, KV, L, 64, generator=g).to(dtype).requires_grad_(grad)

            def run(kernel):
                def call():
                    if grad:
                        kernel(q, k, v, causal=True).sum().backward()
                    else:
                        with torch.inference_mode():
                            kernel(q, k, v, causal=True)
                return call
            n = 3 if args.quick else (20 if grad or T > 1 else 300)
            sdpa = 1e6 * seconds_per_call(run(attention), n)
            ref = 1e6 * seconds_per_call(run(attention_reference), n)
            dname = str(dtype).replace("torch.", "")
            print(f"{dname:9} {name:20} SDPA {sdpa:9.0f}   matmul+softmax {ref:9.0f}   "
                  f"SDPA is {ref / sdpa:4.2f}x as fast", flush=True)


if __name__ == "__main__":
    main()
