"""Does llama.cpp run our GGUF export as we run the folder? Greedy text, side by side.

For each model folder: export an f32 GGUF (`lmstudio-lite export`), then for each prompt compare
`lmstudio-lite generate --json` (temperature 0) with llama.cpp's `llama-completion` (--temp 0) on
the exported file. Equal greedy text means the names, the q/k permutation, the hyperparameters and
the tokenizer all survived the trip. Prints one line per prompt and exits 1 on any mismatch.

    python bench/gguf_export_check.py [--bin DIR] [--tokens 48] [--also q8_0,q4_0] [MODEL_FOLDER ...]

``--also`` exports those weight types too and reports how far llama.cpp's greedy text on them
follows ours in float32 (information: quantized weights may part ways; only f32 must match).

DIR holds llama.cpp's binaries (default: the folder named in /tmp/llamacpp.path, else
$LLAMA_CPP_BIN); the default models are the bundled one and ../shared/data/models/stories260K.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park. They"]


def default_models() -> list[Path]:
    shared = [ROOT.parent / "shared" / "data" / "models" / "stories260K", Path("/work/shared/data/models/stories260K")]
    return [ROOT / "models" / "lmstudio-lite-tiny"] + [next((p for p in shared if p.is_dir()), shared[0])]


def llama_bin(given: str | None) -> Path:
    """llama-completion's folder: --bin, then /tmp/llamacpp.path (a file or folder it names), then $LLAMA_CPP_BIN."""
    candidates = [given, os.environ.get("LLAMA_CPP_BIN")]
    marker = Path("/tmp/llamacpp.path")
    if marker.is_file() and marker.read_text().strip():
        named = Path(marker.read_text().strip())
        candidates.insert(1, str(named if named.is_dir() else named.parent))
    for c in filter(None, candidates):
        if (Path(c) / "llama-completion").is_file():
            return Path(c)
    sys.exit("llama-completion not found: pass --bin DIR (llama.cpp's build/bin)")


def ours(folder: Path, prompt: str, n: int) -> str:
    out = subprocess.run([sys.executable, "-m", "lmstudio_lite", "generate", "--model", str(folder), "--prompt",
                          prompt, "--max-new-tokens", str(n), "--temperature", "0", "--json", "--device", "cpu",
                          "--dtype", "float32"], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["text"]


def theirs(binary: Path, gguf: Path, prompt: str, n: int, attempts: int = 3) -> str:
    """llama.cpp's greedy text. A run whose stderr lacks llama.cpp's closing timing summary ended early
    (seen here now and then: exit 0, output cut mid-word, no summary); it is retried, and said so."""
    cmd = [str(binary / "llama-completion"), "-m", str(gguf), "-p", prompt, "-n", str(n), "--temp", "0",
           "--top-k", "1", "--seed", "0", "-t", "1", "-no-cnv", "--no-display-prompt", "--no-warmup",
           "-c", "256", "--repeat-penalty", "1.0"]
    for attempt in range(attempts):
        out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode < 0:
            import signal

            raise RuntimeError(f"llama-completion died of {signal.Signals(-out.returncode).name} "
                               "(SIGILL: the build uses an instruction this CPU lacks)")
        if out.returncode != 0:
            raise RuntimeError(f"llama-completion failed ({out.returncode}): {out.stderr[-2000:]}")
        if "total time" in out.stderr:
            return out.stdout.removesuffix("\n").removesuffix(" [end of text]")
        print(f"    (llama-completion ended before its summary, attempt {attempt + 1}; retrying)")
    raise RuntimeError(f"llama-completion ended early {attempts} times")


def compare(a: str, b: str) -> str:
    """'same', or where the two texts part (leading spaces aside: SentencePiece decoders strip one)."""
    a, b = a.strip(), b.strip()
    if a == b:
        return "same"
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"DIFFER at char {i}: ours {a[i:i + 30]!r} vs llama.cpp {b[i:i + 30]!r}"


def export(folder: Path, tmp: Path, quant: str) -> Path:
    gguf = tmp / f"{folder.name}.{quant}.gguf"
    subprocess.run([sys.executable, "-m", "lmstudio_lite", "export", str(folder), "--gguf", str(gguf), "--quant",
                    quant], cwd=ROOT, check=True, capture_output=True)
    return gguf


def report_quant(binary: Path, gguf: Path, prompt: str, n: int, reference: str) -> str:
    try:
        return compare(reference, theirs(binary, gguf, prompt, n))
    except RuntimeError as e:
        return f"llama.cpp failed: {str(e).splitlines()[0]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--also", default="", help="comma-separated quantized types to report on (bf16,q8_0,q4_0)")
    args = ap.parse_args()
    binary, failures = llama_bin(args.bin), 0
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.models or default_models():
            files = {q: export(folder, Path(tmp), q) for q in ["f32"] + [q for q in args.also.split(",") if q]}
            for prompt in PROMPTS:
                a, b = ours(folder, prompt, args.tokens), theirs(binary, files["f32"], prompt, args.tokens)
                verdict = compare(a, b)
                failures += verdict != "same"
                print(f"{folder.name:20} {prompt[:24]!r:28} {verdict}")
                print(f"    ours:      {a.strip()[:100]!r}\n    llama.cpp: {b.strip()[:100]!r}")
                for q, path in files.items():
                    if q != "f32":
                        print(f"    {q:5} llama.cpp vs our f32: {report_quant(binary, path, prompt, args.tokens, a)}")
    print("all greedy outputs equal" if not failures else f"{failures} prompt(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
