"""Our GGUF tokenizer against llama.cpp's own (`llama-tokenize`), text by text.

Runs llama-tokenize (special-token parsing on and BOS as the model asks: its defaults) on
en/fr/de/zh lines of ../shared/data, code, emoji and whitespace edge cases, for SmolLM2
(byte-level BPE, smollm pre-tokenizer), tests/data/stories260K-f32.gguf (SentencePiece) and
tests/data/bpe-small.gguf renamed to each pre-tokenizer we support (default, gpt-2, llama3, qwen2, smollm).
Prints how many match and the first mismatches; ``--write`` stores llama.cpp's ids as the
golden file tests/test_gguf_tokenizer.py checks in CI (where there is no llama.cpp).

    python bench/gguf_tokenize_parity.py [--llama-tokenize PATH] [--write]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures_gguf import fetch_smollm2  # noqa: E402
from shared_data import SHARED_DATA  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "gguf_tokenize_golden.json"
PER_LANGUAGE = 12  # lines per language, spread over each file (its lines grow longer further down)

CODE = [
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) {\n\tprintf(\"%d\\n\", i * 1234567);\n}",
    "const url = `https://example.com/api?q=${encodeURIComponent(x)}&n=42`;",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;  -- ok",
    "    indented\n\n\n  lines   with    runs of spaces\r\nand CRLF",
]
EMOJI = ["I love this 😀😃😄!", "👩‍💻 writes code; 🇫🇷 flag, 👍🏽 thumbs", "Symbols: ∑∫√ ≤≥ →← ©®™ ½¾"]
EDGE = [" leading space", "trailing space ", "  two leading", "", "1234567890 3.14159 1,000,000",
        "don't won't it's I'm you're we'll they'd", "UPPER lower MiXeD", "<|im_start|>user\nhi<|im_end|>",
        "Tab\there", "a\n\nb", "naïve café résumé Ünïcödé", "日本語のテキストと한국어 텍스트",
        # where the pre-tokenizers part ways: digit runs, punctuation runs, newlines, upper-case contractions
        "Numbers: 1 12 123 1234 12345 123456 in 2024", "Email me at a.b@c.io!!! ... ??? $100+$200=<$300>^~|",
        "HELLO'S WORLD'LL DO IT'D", "\n\n\t  \n x\r\n\r\ny", "end.\n\n\nNext    paragraph\t\t!"]


def shared_lines() -> list[str]:
    """PER_LANGUAGE English, French, German and Chinese lines, evenly spaced through each file."""
    texts = []
    for pair in ("en_fr", "en_de", "en_zh"):
        with open(SHARED_DATA / f"translation_{pair}.tsv", encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 2]
        step = max(1, len(rows) // PER_LANGUAGE)
        picked = rows[step // 2::step][:PER_LANGUAGE]
        texts += [r[1] for r in picked] + ([r[0] for r in picked] if pair == "en_fr" else [])
    return texts


def all_texts() -> list[str]:
    return shared_lines() + CODE + EMOJI + EDGE


def llama_tokenize(exe: str, model: Path, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))  # -f reads the bytes verbatim (no trailing-newline strip)
    try:
        out = subprocess.run([exe, "-m", str(model), "-f", f.name, "--no-escape", "--ids", "--log-disable"],
                             capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(f.name)
    if out.returncode:
        sys.exit(f"llama-tokenize failed on {model.name}: {out.stderr[-1000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def models(workdir: Path) -> dict[str, Path]:
    """SmolLM2, stories260K, and tests/data/bpe-small.gguf under each pre-tokenizer we support."""
    from helpers_gguf import DATA, vocab_only_copy

    from lmstudio_lite.checkpoints.gguf_tokenizer import PRE_TOKENIZERS

    out = {"smollm2": fetch_smollm2(), "stories260K": DATA / "stories260K-f32.gguf"}
    for pre in PRE_TOKENIZERS:
        out[f"bpe-small-{pre}"] = vocab_only_copy(DATA / "bpe-small.gguf", workdir / f"bpe-small-{pre}.gguf", pre)
    return out


def find_llama_tokenize(given: str | None) -> str:
    if given:
        return given
    built = Path("/tmp/llamacpp.path").read_text().strip() if Path("/tmp/llamacpp.path").is_file() else ""
    for base in (built, "/root/.cache/lsl-peers/llama.cpp/src/build/bin"):
        for cand in (Path(base) / "llama-tokenize", Path(base) / "bin" / "llama-tokenize"):
            if base and cand.is_file():
                return str(cand)
    sys.exit("llama-tokenize not found: build llama.cpp (../shared/tools/llamacpp.sh) or pass --llama-tokenize")


def compare(name: str, path: Path, cases: list[dict]) -> int:
    from lmstudio_lite.checkpoints.gguf_file import open_gguf
    from lmstudio_lite.checkpoints.gguf_tokenizer import tokenizer_from_gguf

    tok = tokenizer_from_gguf(open_gguf(path))
    bad = [c for c in cases if tok.encode(c["text"]) != c["ids"]]
    print(f"{name}: {len(cases) - len(bad)}/{len(cases)} texts give llama.cpp's ids")
    for c in bad[:5]:
        print(f"  {c['text'][:60]!r}\n    llama.cpp {c['ids'][:16]}\n    ours      {tok.encode(c['text'])[:16]}")
    return len(bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-tokenize", help="path of llama.cpp's llama-tokenize")
    ap.add_argument("--write", action="store_true", help=f"store llama.cpp's ids in {GOLDEN.relative_to(ROOT)}")
    args = ap.parse_args()
    exe = find_llama_tokenize(args.llama_tokenize)
    texts = all_texts()
    golden = {"source": "llama.cpp llama-tokenize (special tokens parsed, BOS as the model asks)", "models": {}}
    failures = 0
    with tempfile.TemporaryDirectory() as workdir:
        for name, path in models(Path(workdir)).items():
            cases = [{"text": t, "ids": llama_tokenize(exe, path, t)} for t in texts]
            golden["models"][name] = {"file": path.name, "cases": cases}
            failures += compare(name, path, cases)
    if args.write:
        GOLDEN.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {GOLDEN}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
