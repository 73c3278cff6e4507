"""The native GEMV kernels of two builds of decode.c, paired: which one streams a model's matrices faster.

    python bench/kernel_ab.py --old HEAD                       # HEAD's kernel against the working tree's
    python bench/kernel_ab.py --old HEAD~2 --new HEAD --shape 1b --formats q4_0 q8_0
    python bench/kernel_ab.py --gguf /tmp/lsl-bench-gguf/SmolLM2-135M-Instruct-q4_1.gguf   # whole decode steps
    python bench/kernel_ab.py --gguf FILE --rows 8 --pos 1000 --threads 2    # 8 rows, deep in a chat
    python bench/kernel_ab.py --old REV --gguf FILE --pos 1000 --threads 2 --old-kv float32 --new-kv float16
    python bench/kernel_ab.py --model models/lmstudio-lite-tiny --rows 8 --pos 100 --old-kv float16 --new-kv float16
    python bench/kernel_ab.py --packed --formats q4_1 --rows 8 --threads 2   # the packed int8 rows (rows_x16)
    python bench/kernel_ab.py --quick                          # a tiny shape: checks the script runs

Each format gets a whole model's worth of random matrices (every layer's q|k|v, o, gate|up and down,
and the head: Q8_0 in the 4-bit files, as llama-quantize writes SmolLM2's tied embedding), so the
weights stream from beyond L2 as in a decode step. One pass is x @ every matrix through
``lml_linear`` at batch B. The two builds alternate pass by pass (old, new, new, old, ...), so drift
hits both alike, and each pass is timed on the calling thread's CPU time at one thread
(``time.thread_time``: other processes' load disturbs it least) or on the wall clock at more. Prints
the median ms per pass of each, GB/s of weight bytes, and the median of the paired ratios old/new;
beside them, torch's sum of the same bytes (as float32) at the same time: the read bandwidth to reach.
``--packed`` packs the 4-bit formats' matrices (and their Q8_0 head, rounded) 16 outputs side by side
and runs them through ``lml_linear_x16``, prefill's entry, where a CPU has AVX-512 VNNI: the int8 rows
that prefill and the batched decode step run; it also prints GMAC/s.
With ``--gguf`` (or ``--model``, a checkpoint folder such as the bundled model's), a pass is instead
``--steps`` decode steps of that model (our loader, the native step with its head; ``--rows`` rows at
position ``--pos``), the two builds swapped under the same prepared model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmstudio_lite import native  # noqa: E402

NATIVE_FILES = ("decode.c", "gemv.h")
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
SHAPES = {  # d_model, layers, fused q|k|v width, d_ff (gate|up is 2 d_ff), vocabulary
    "smollm": dict(C=576, L=30, Q=960, FF=1536, V=49152),
    "1b": dict(C=2048, L=16, Q=3072, FF=5632, V=32000),
    "l2": dict(C=576, L=1, Q=960, FF=768, V=512),  # 1.4 MB in Q4: fits L2, so the GB/s are the kernel's own
    "tiny": dict(C=256, L=2, Q=384, FF=512, V=1024),
}


def source_at(rev: str | None, out: Path) -> Path:
    """decode.c (and its header) at a git revision, or the working tree's when rev is None."""
    here = ROOT / "lmstudio_lite" / "native"
    if rev is None:
        return here / "decode.c"
    out.mkdir(parents=True, exist_ok=True)
    for name in NATIVE_FILES:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:lmstudio_lite/native/{name}"],
                              capture_output=True, text=True, check=True).stdout
        (out / name).write_text(text)
    return out / "decode.c"


def random_matrix(fmt: str, K: int, N: int, g: torch.Generator) -> torch.Tensor:
    """N rows of K inputs in fmt: random quants, every block scale (and min) a modest fp16."""
    if fmt == "f32":
        return torch.randn(K, N, generator=g) * 0.05  # [in, out], as decode.c's T_F32
    if fmt == "bf16":
        return (torch.randn(N, K, generator=g) * 0.05).bfloat16()
    size = BLOCK_BYTES[fmt]
    blocks = torch.randint(0, 256, (N, K // 32, size), dtype=torch.uint8, generator=g)
    heads = 2 if fmt == "q4_1" else 1  # d (and m) lead the block
    scale = torch.tensor([0.01] * heads, dtype=torch.float16).view(torch.uint8)
    blocks[:, :, :2 * heads] = scale
    return blocks.reshape(N, -1)


def model_matrices(shape: dict, fmt: str, g: torch.Generator) -> list[tuple[str, torch.Tensor, int, int]]:
    """(format, weights, K, N) of every matrix a decode step reads, in step order."""
    C, FF = shape["C"], shape["FF"]
    layer = [(C, shape["Q"]), (C, C), (C, 2 * FF), (FF, C)]
    out = [(fmt, random_matrix(fmt, K, N, g), K, N) for _ in range(shape["L"]) for K, N in layer]
    head = "q8_0" if fmt.startswith("q4") else fmt
    return out + [(head, random_matrix(head, C, shape["V"], g), C, shape["V"])]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="HEAD", help="git revision of the first build")
    p.add_argument("--new", default=None, help="git revision of the second build (default: the working tree)")
    p.add_argument("--old-defines", default="", help="compiler flags of the old build, e.g. =-DLML_PREFETCH=4096")
    p.add_argument("--new-defines", default="")
    p.add_argument("--shape", choices=list(SHAPES), default="smollm")
    p.add_argument("--formats", nargs="+", default=["q4_1", "q4_0", "q8_0"], choices=["f32", "bf16", *BLOCK_BYTES])
    p.add_argument("--rows", type=int, default=1, help="batch B of each GEMV")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "lsl-kernel-ab"),
                   help="where the libraries are built and kept (perf can then name their symbols)")
    p.add_argument("--gguf", help="time whole decode steps of this GGUF model instead of its shape's matrices")
    p.add_argument("--model", help="as --gguf, a checkpoint folder (the bundled model: models/lmstudio-lite-tiny)")
    p.add_argument("--pos", type=int, default=0, help="with --gguf: the rows' position (attention reads that many)")
    p.add_argument("--steps", type=int, default=10, help="with --gguf: decode steps per timed pass")
    p.add_argument("--old-kv", choices=["float32", "bfloat16", "float16"], default=None,
                   help="with --gguf: the old build's KV cache type (default: the model's)")
    p.add_argument("--new-kv", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--packed", action="store_true", help="the 4-bit formats packed for rows_x16, through "
                   "lml_linear_x16 (prefill's entry)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.packed:
        if not native.decode_library().lml_x16():
            p.error("--packed: this CPU has no AVX-512 VNNI, so the kernel packs nothing")
        if not set(args.formats) <= {"q4_0", "q4_1"}:
            p.error("--packed takes the 4-bit formats (--formats q4_0 q4_1)")
    if args.quick:
        args.shape, args.pairs = "tiny", 2
    shape = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as tmp:
        libs = {}
        for label, rev in (("old", args.old), ("new", args.new)):
            src = source_at(rev, Path(tmp) / label)
            defines = tuple(getattr(args, f"{label}_defines").split())
            libs[label] = native.load(native.build(src, Path(args.build_dir), defines=defines))  # reused
        torch.set_num_threads(args.threads)  # the read baseline uses as many
        load = os.getloadavg()[0]
        clock = time.thread_time if args.threads == 1 else time.perf_counter
        steps_of = args.gguf or args.model
        what = Path(steps_of).name if steps_of else f"{args.shape} B={args.rows}"
        print(f"{what}, {args.threads} thread(s), {args.pairs} pairs, "
              f"{'thread CPU' if args.threads == 1 else 'wall'} time; old {args.old}, new {args.new or 'working tree'}; "
              f"load average {load:.1f}", flush=True)
        if steps_of:
            return steps_ab(args, libs, clock)
        for fmt in args.formats:
            compare_format(fmt, shape, args, libs, clock)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


def compare_format(fmt: str, shape: dict, args, libs: dict, clock) -> None:
    """One format's paired passes over a model's worth of random matrices, printed as one line."""
    g = torch.Generator().manual_seed(0)
    mats = model_matrices(shape, fmt, g)
    nbytes = sum(w.numel() * w.element_size() for _, w, _, _ in mats)
    widest = max(max(K, N) for _, _, K, N in mats)
    x = torch.randn(args.rows, widest, generator=g)
    out = torch.empty(args.rows, widest)
    if args.packed:  # the packed layout is the same in both builds: pack once, with the old one
        codes = [native.Q8_0_ROUNDED if f == "q8_0" else native.FORMATS[f] for f, _, _, _ in mats]
        packed = [torch.empty_like(w) for _, w, _, _ in mats]
        codes = [libs["old"].lml_pack_x16(c, w.data_ptr(), N, K, p.data_ptr())
                 for c, (_, w, K, N), p in zip(codes, mats, packed)]
        entry = "lml_linear_x16"
        scratch = {k: torch.empty(max(lib.lml_linear_x16_scratch_floats(K, args.rows) for _, _, K, _ in mats))
                   for k, lib in libs.items()}
    else:
        codes, packed, entry = [native.FORMATS[f] for f, _, _, _ in mats], [w for _, w, _, _ in mats], "lml_linear"
        scratch = {k: torch.empty(max(lib.lml_linear_scratch_floats(K, N, args.rows, args.threads)
                                      for _, _, K, N in mats)) for k, lib in libs.items()}

    def one_pass(label):
        run, s = getattr(libs[label], entry), scratch[label].data_ptr()
        t = clock()
        for code, w, (_, _, K, N) in zip(codes, packed, mats):
            run(code, w.data_ptr(), None, K, N, args.rows, x.data_ptr(), out.data_ptr(), s, args.threads)
        return clock() - t

    flat = [w.view(-1).view(torch.float32) for _, w, _, _ in mats]  # the same bytes, as floats

    def read_pass():  # the read bandwidth the machine gives one pass right now
        t = clock()
        for w in flat:
            w.sum()
        return clock() - t

    one_pass("old"), one_pass("new"), read_pass()  # warm: page faults, caches
    times = {"old": [], "new": [], "read": []}
    for i in range(args.pairs):
        for label in (("old", "new") if i % 2 == 0 else ("new", "old")):
            times[label].append(one_pass(label))
        times["read"].append(read_pass())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(o / n for o, n in zip(times["old"], times["new"]))
    macs = sum(K * N for _, _, K, N in mats) * args.rows
    print(f"{fmt:5} {nbytes / 1e6:6.0f} MB  old {med['old'] * 1e3:7.2f} ms ({nbytes / med['old'] / 1e9:5.1f} GB/s, "
          f"{macs / med['old'] / 1e9:4.0f} GMAC/s)  new {med['new'] * 1e3:7.2f} ms ({nbytes / med['new'] / 1e9:5.1f} GB/s, "
          f"{macs / med['new'] / 1e9:4.0f} GMAC/s)  old/new {ratio:.3f}x"
          f"  (torch sum of the same bytes {nbytes / med['read'] / 1e9:5.1f} GB/s)",
          flush=True)


def steps_ab(args, libs, clock) -> None:
    """Paired decode steps of a GGUF model or checkpoint folder: ``--rows`` rows at position ``--pos``
    (the cache before it random values, as long chats leave it), the two builds' libraries swapped in turn."""
    sys.path.insert(0, str(ROOT / "bench"))
    from peer_llamacpp import load_ours  # noqa: E402

    from lmstudio_lite import load_model  # noqa: E402
    from lmstudio_lite.model import KVCache  # noqa: E402

    if args.model:
        model = load_model(args.model, device="cpu").model
        dtype = model.dtype
    else:
        dtype = torch.bfloat16 if "bf16" in Path(args.gguf).name else torch.float32  # as bench/decode.py loads it
        model = load_ours(Path(args.gguf), dtype)
    decoder = model.native  # the prepared step: only its library is swapped (same ABI in both builds)
    B, P = args.rows, args.pos
    caches = {}
    for label in ("old", "new"):  # each build's own cache: its KV type (--old-kv, --new-kv), the same values
        kv = getattr(args, f"{label}_kv")
        caches[label] = KVCache(model.config, B, P + 1, dtype=getattr(torch, kv) if kv else dtype)
        g = torch.Generator().manual_seed(0)
        caches[label].k.copy_(torch.randn(caches[label].k.shape, generator=g))
        caches[label].v.copy_(torch.randn(caches[label].v.shape, generator=g))
    tokens, positions, slots = torch.full((B,), 1), torch.full((B,), P), torch.arange(B)
    times = {"old": [], "new": []}
    with torch.inference_mode():
        for i in range(2 * args.pairs + 4):
            label = ("old", "new", "new", "old")[i % 4]
            decoder._lib, decoder._scratch_for = libs[label], None  # a build may lay its scratch out differently
            cache = caches[label]
            decoder.step(tokens, positions, slots, cache, logits=decoder.fused_head)  # the new scratch's pages
            t = clock()
            for _ in range(args.steps):
                decoder.step(tokens, positions, slots, cache, logits=decoder.fused_head)
            if i >= 4:  # the first passes warm both
                times[label].append((clock() - t) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(o / n for o, n in zip(times["old"], times["new"]))
    kvs = {label: str(caches[label].k.dtype).removeprefix("torch.") for label in caches}
    print(f"{Path(args.gguf or args.model).name}, {B} row(s) at position {P}, KV old {kvs['old']} new {kvs['new']}: "
          f"ms per step old {med['old'] * 1e3:.2f}, new "
          f"{med['new'] * 1e3:.2f}, old/new {ratio:.3f}x (median of {len(times['new'])} pairs); load average after "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
