"""Attention kernels on this CPU: SDPA against plain matmul + softmax (grouped queries).

    python bench/attention.py           # decode, prefill and a training step; float32 + bfloat16
    python bench/attention.py --quick   # small sizes: checks the script runs
    python bench/attention.py --prefill FILE_OR_FOLDER [--lengths "128;100,100,100,100,100;512;1024;3000"]
    python bench/attention.py --kernel 128,512,1024,3000,6000   # lml_attend alone against SDPA

``--prefill``: whole prefill passes of a model (an ``InferenceModel``, prompts side by side as a
scheduler packs them, a float16 KV cache), attention through the native kernel (``lml_attend``,
``model/native_attention.py``, whatever the span) against torch's SDPA, alternated pass by pass;
the median of the paired ratios torch/ours, per set of prompt lengths. ``--kernel``: one segment of
each length from position 0 (SmolLM2's 9 heads, 3 KV heads of 64, a float16 cache), ``lml_attend``
against SDPA on the widened K and V, the best of a few calls each, and GFLOP/s.

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
    p.add_argument("--prefill", help="a model (GGUF file or folder): its prefill passes, kernel against SDPA")
    p.add_argument("--lengths", default="128;100,100,100,100,100;512;768;1024;3000",
                   help="with --prefill: sets of prompt lengths, ';' between sets")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--kernel", help="segment lengths, ',' between: lml_attend alone against SDPA")
    args = p.parse_args()
    if args.prefill:
        return prefill_ab(args)
    if args.kernel:
        return kernel_vs_sdpa([int(n) for n in args.kernel.split(",")])
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


def kernel_vs_sdpa(lengths: list[int]) -> None:
    from lmstudio_lite import native
    from timing import machine

    lib = native.decode_library()
    threads = torch.get_num_threads()
    H, KV, D = 9, 3, 64
    print(f"{machine()}; {threads} threads; one segment, {H} heads, {KV} KV heads of {D}, float16 cache")
    for T in lengths:
        g = torch.Generator().manual_seed(T)
        q = torch.randn(T, H, D, generator=g)
        k, v = (torch.randn(KV, T, D, generator=g).half() for _ in range(2))
        out = torch.empty(T, H * D)
        scratch = torch.empty(lib.lml_attend_scratch_floats(H, KV, D, T, threads))
        qq, kk, vv = q.transpose(0, 1)[None], k.float()[None], v.float()[None]

        def ours():
            lib.lml_attend(q.data_ptr(), T, H, KV, D, 0, k.data_ptr(), v.data_ptr(), 2, T * D, out.data_ptr(),
                           scratch.data_ptr(), threads)

        def sdpa():
            attention(qq, kk, vv, causal=True)

        best = {}
        for _ in range(3):  # alternated, the best of each
            for name, f in (("kernel", ours), ("sdpa", sdpa)):
                best[name] = min(best.get(name, 1e9), seconds_per_call(f, max(1, 2000 // T), warmup=1))
        flops = H * T * T / 2 * D * 4  # q.k and p.v over the causal half, a multiply and an add each
        print(f"{T:6} positions: kernel {best['kernel'] * 1e3:8.2f} ms ({flops / best['kernel'] / 1e9:4.0f} GFLOP/s)   "
              f"SDPA {best['sdpa'] * 1e3:8.2f} ms ({flops / best['sdpa'] / 1e9:4.0f} GFLOP/s)", flush=True)


def prefill_ab(args) -> None:
    import statistics
    import time

    from lmstudio_lite import load_model
    from lmstudio_lite.memory import keep_freed_memory
    from lmstudio_lite.model import KVCache, native_attention
    from lmstudio_lite.model.kv_cache import Packed
    from timing import machine

    keep_freed_memory()  # the server's allocator policy (cli.main)
    model = load_model(args.prefill, device="cpu").model
    print(f"{machine()}; {torch.get_num_threads()} threads; prefill passes of {os.path.basename(args.prefill)}",
          flush=True)
    spans = {"sdpa": 0, "kernel": 10 ** 9}  # native_attention.SPAN: the pass's attention on one side or the other
    for spec in args.lengths.split(";"):
        lens = [int(n) for n in spec.split(",")]
        cache = KVCache(model.config, len(lens), max(lens), dtype=torch.float16)
        ids = torch.randint(100, 1000, (1, sum(lens)), generator=torch.Generator().manual_seed(0))
        times = {"sdpa": [], "kernel": []}
        with torch.inference_mode():
            for i in range(2 * args.pairs + 2):
                side = ("sdpa", "kernel", "kernel", "sdpa")[i % 4]
                native_attention.SPAN = spans[side]
                packed = Packed(list(range(len(lens))), [0] * len(lens), lens)
                t = time.perf_counter()
                model.forward_hidden(ids, start_pos=packed, cache=cache)
                if i >= 2:  # the first pair warms both
                    times[side].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = statistics.median(a / b for a, b in zip(times["sdpa"], times["kernel"]))
        print(f"prompts {spec:24} SDPA {med['sdpa'] * 1e3:8.1f} ms ({sum(lens) / med['sdpa']:5.0f} tok/s)   kernel "
              f"{med['kernel'] * 1e3:8.1f} ms ({sum(lens) / med['kernel']:5.0f} tok/s)   SDPA/kernel {ratio:.3f}x",
              flush=True)


if __name__ == "__main__":
    main()
