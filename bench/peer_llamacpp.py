"""Our engine against llama.cpp on the same GGUF weights, format by format (``bench/decode.py --peer llama.cpp``).

Every format is made from one float32 GGUF with ``llama-quantize``, so both engines
run identical weights: the source file (SmolLM2-135M-Instruct Q4_1 by default,
from ../shared/tools/smollm2.sh) is requantized to F32, and BF16, Q8_0, Q4_0,
Q4_1 are made from that F32 file. ``--shape 1b`` writes a random-weight Llama of
the 1B shape as the F32 file instead (bench/random_gguf.py). Ours loads each file
with ``load_gguf_weights`` (the file's own blocks; a tied Q8_0 embedding is also
the Q8_0 head, as in llama.cpp).

Decode: ``llama-bench -p 0 -n N -t T`` (tg: N tokens from an empty context)
against our greedy loop from a one-token prompt for N tokens; prefill:
``llama-bench -p P -n 0`` against one forward of P tokens. The two run
alternately, ``repeats`` times, and the ratio printed is the median of the
back-to-back pairs (the shared VM's speed drifts). Each figure is also shown as
a share of the machine's read bandwidth: weight bytes a token streams (the
same file for both) times tok/s over a measured sum over a buffer of that size.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from lmstudio_lite.checkpoints.gguf_file import config_from_gguf, open_gguf
from lmstudio_lite.checkpoints.gguf_weights import load_gguf_weights
from lmstudio_lite.generation.sampling import argmax_rows
from lmstudio_lite.model import KVCache
from lmstudio_lite.model.inference import InferenceModel

FORMATS = ["f32", "bf16", "q8_0", "q4_1", "q4_0"]
NATIVE_BIN = Path.home() / ".cache/lsl-peers/llama.cpp/src/build/bin"  # ../shared/tools/llamacpp.sh
# The same source built with -DGGML_NATIVE=OFF and AVX-512/VNNI/BF16 on, AMX off: on the Sapphire
# Rapids VMs GCC 12 drops the stores that fill ggml's AMX tile config, so the native build's
# quantized GEMMs die (SIGSEGV at ldtilecfg, SIGILL at tilezero). See README, "GGUF files".
NOAMX_BIN = Path.home() / ".cache/lsl-peers/llama.cpp-noamx/src/build/bin"
TOOLS = ["llama-bench", "llama-completion", "llama-tokenize", "llama-perplexity", "llama-quantize"]


def find_bin() -> Path:
    """$LSL_LLAMA_BIN, else the AMX-free build when it is complete, else llamacpp.sh's build."""
    if os.environ.get("LSL_LLAMA_BIN"):
        return Path(os.environ["LSL_LLAMA_BIN"])
    if all((NOAMX_BIN / t).is_file() for t in TOOLS):
        return NOAMX_BIN
    return NATIVE_BIN


def safe_args(bin_dir: Path) -> list[str]:
    """Flags that keep a -march=native build off its AMX kernels (llama-perplexity, llama-completion):
    --no-repack turns off the extra buffer types, AMX's among them."""
    cache = bin_dir.parent / "CMakeCache.txt"
    native = cache.is_file() and "GGML_NATIVE:BOOL=ON" in cache.read_text(errors="replace")
    return ["--no-repack"] if native else []


# ggml's AMX tile config (ggml_tile_config_init in ggml-cpu/amx/mmq.cpp) fills a struct and passes
# its address to _tile_loadconfig; GCC 12 -O3 drops most of the stores (it does not see the
# intrinsic read them), so the AMX kernels die. One empty asm statement that reads the struct keeps
# them (our kernel has the same line, gemv.h's amx_configure). SERVER_DIR is llamacpp.sh's source
# built again with that line and the server: the peer of bench/serve.py, with AMX on as LM Studio and
# Ollama run it on this CPU.
AMX_FIX = 'asm volatile("" : : "m"(tc));  // lmstudio_lite bench: GCC 12 drops the stores above otherwise'
SERVER_BIN = NATIVE_BIN.parents[1] / "build-server" / "bin"


def server_bin() -> Path:
    """llama-server, with the AMX fix: $LSL_LLAMA_SERVER, else SERVER_BIN's, built here on first use
    (llamacpp.sh's source, AMX_FIX applied, the server target: several minutes on 2 cores)."""
    if os.environ.get("LSL_LLAMA_SERVER"):
        return Path(os.environ["LSL_LLAMA_SERVER"])
    exe = SERVER_BIN / "llama-server"
    if exe.is_file():
        return exe
    src = NATIVE_BIN.parents[1]
    mmq = src / "ggml/src/ggml-cpu/amx/mmq.cpp"
    if not mmq.is_file():
        raise FileNotFoundError(f"no llama.cpp source at {src}: run ../shared/tools/llamacpp.sh first")
    text = mmq.read_text()
    if AMX_FIX not in text:
        anchor = "    _tile_loadconfig(&tc);"
        if anchor not in text:
            raise RuntimeError(f"{mmq} has no tile config to fix (another llama.cpp version?)")
        mmq.write_text(text.replace(anchor, "    " + AMX_FIX + "\n" + anchor, 1))
    flags = ["-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_USE_PREBUILT_UI=OFF"]
    for cmd in (["cmake", "-S", str(src), "-B", str(SERVER_BIN.parent), *flags],
                ["cmake", "--build", str(SERVER_BIN.parent), "-j", str(os.cpu_count() or 2), "--target", "llama-server"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {(proc.stderr or proc.stdout)[-800:]}")
    return exe


DEFAULT_BIN = find_bin()
DEFAULT_GGUF = Path.home() / ".cache/lsl-peers/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _run(cmd: list[str], bin_dir: Path) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed with exit status {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def make_formats(source: Path, bin_dir: Path, work: Path, formats: list[str]) -> dict[str, Path]:
    """One GGUF per format, all from one F32 requantization of ``source`` (made once, kept in ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    stem = source.name.split(".")[0]
    f32 = work / f"{stem}-f32.gguf"
    if _file_type(source) == "ALL_F32":
        f32 = source  # already the float32 file (the random 1B shape)
    elif not f32.exists():
        _run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(f32), "F32"], bin_dir)
    out = {}
    for fmt in formats:
        path = work / f"{stem}-{fmt}.gguf"
        if fmt != "f32" and not path.exists():
            _run([str(bin_dir / "llama-quantize"), str(f32), str(path), fmt.upper()], bin_dir)
        out[fmt] = f32 if fmt == "f32" else path
    return out


def _file_type(path: Path) -> str:
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).get_field("general.file_type")
    return LlamaFileType(int(field.contents())).name if field is not None else "unknown"


def load_ours(path: Path, dtype):
    """Our model from a GGUF's weights (the tokenizer is not needed to time decoding)."""
    reader = open_gguf(path)
    return InferenceModel(load_gguf_weights(reader, config_from_gguf(reader), dtype=dtype)[0])


def step_bytes(model) -> int:
    """Weight bytes one decode step streams: every block's matrices and norms, the final norm and
    the head (quantized blocks, a float head, or the tied embedding read as the head)."""
    model, total = model.net, 0
    # remove_duplicate=False: a quantized tied head shares its blocks with the embedding, which
    # comes first and would otherwise hide them (SmolLM2 Q4_1 counted 66 MB, not 96)
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if name.startswith("blocks.") or name.startswith("norm_f") or name.startswith("head"):
            total += t.numel() * t.element_size()
    if model.head is None:
        total += model.tok_emb.weight.numel() * model.tok_emb.weight.element_size()
    return total


def llama_bench(bin_dir: Path, path: Path, threads: int, n_prompt: int, n_gen: int) -> float:
    """tok/s of one llama-bench test (one repetition: the caller repeats and interleaves); NaN when
    llama-bench dies (this VM's build stops with SIGILL in its prompt-processing kernels)."""
    try:
        out = _run([str(bin_dir / "llama-bench"), "-m", str(path), "-p", str(n_prompt), "-n", str(n_gen),
                   "-t", str(threads), "-r", "1", "-o", "json"], bin_dir)
    except RuntimeError:
        if n_gen:
            raise
        return float("nan")
    return float(json.loads(out)[0]["avg_ts"])


@torch.inference_mode()
def ours_decode(model, n_gen: int, rows: int, dtype) -> float:
    """Tokens/s (all rows) of greedy decoding n_gen tokens per row from a one-token prompt, each
    token picked as the engine picks a greedy one (``argmax_rows``: llama-bench's tg picks none;
    torch's argmax over SmolLM2's 49k logits took 110 us a token, 2-3% of a step)."""
    cache = KVCache(model.config, rows, n_gen + 1, dtype=dtype)
    tok = torch.full((rows, 1), 1)
    t = time.perf_counter()
    for i in range(n_gen):
        tok = argmax_rows(model(tok, i, cache, last_only=True)[:, -1]).unsqueeze(1)
    return n_gen * rows / (time.perf_counter() - t)


@torch.inference_mode()
def ours_prefill(model, n_prompt: int, dtype) -> float:
    cache = KVCache(model.config, 1, n_prompt, dtype=dtype)
    ids = torch.randint(0, model.config.vocab_size, (1, n_prompt), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    model(ids, 0, cache, last_only=True)
    return n_prompt / (time.perf_counter() - t)


def compare(args, measure_bandwidth) -> None:
    bin_dir = Path(args.llama_bin)
    source = Path(args.gguf)
    if args.shape == "1b":
        from random_gguf import SHAPE_1B, write_random_llama

        source = Path(args.workdir) / "random-llama-1b-f32.gguf"
        if not source.exists():
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            write_random_llama(source, **SHAPE_1B)
    files = make_formats(source, bin_dir, Path(args.workdir), args.formats)
    threads = torch.get_num_threads()
    print(f"llama.cpp {bin_dir}, {threads} threads, decode {args.new} tokens, prefill {args.prompt}; "
          f"weights from {source}", flush=True)
    print("| format | MB/token | ours tok/s | llama.cpp tok/s | ours/llama.cpp (median of pairs) | ours % bw | "
          "llama.cpp % bw | ours B=8 tok/s | ours pp tok/s | llama.cpp pp tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for fmt in args.formats:
        dtype = torch.bfloat16 if fmt == "bf16" else torch.float32
        model = load_ours(files[fmt], dtype)
        nbytes = step_bytes(model)
        bw = measure_bandwidth(nbytes)
        ours_decode(model, 8, 1, dtype), llama_bench(bin_dir, files[fmt], threads, 0, 8)  # warm both
        pairs, pp = [], []
        for _ in range(args.repeats):  # alternate, so that drift hits both alike
            pairs.append((ours_decode(model, args.new, 1, dtype), llama_bench(bin_dir, files[fmt], threads, 0, args.new)))
            pp.append((ours_prefill(model, args.prompt, dtype), llama_bench(bin_dir, files[fmt], threads, args.prompt, 0)))
        b8 = max(ours_decode(model, args.new // 4, 8, dtype) for _ in range(max(1, args.repeats // 2)))
        o, l = max(p[0] for p in pairs), max(p[1] for p in pairs)
        ratio = statistics.median(a / b for a, b in pairs)
        share = lambda tps: tps * nbytes / 1e9 / bw  # noqa: E731
        print(f"| {fmt} | {nbytes / 1e6:.0f} | {o:.1f} | {l:.1f} | {ratio:.2f}x | {share(o):.0%} | {share(l):.0%} | "
              f"{b8:.1f} | {max(p[0] for p in pp):.0f} | {max((p[1] for p in pp), default=float('nan')):.0f} |  (bw {bw:.1f} GB/s)", flush=True)
        del model
