"""Copy a trained folder into models/ and write its model card with evaluation figures.

    python recipes/default_model/finalize.py TRAINED_FOLDER models/lmstudio-lite-tiny [--run RUN_FOLDER]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "recipes")]

from eval_model import evaluate  # noqa: E402
from heldout import SHARED  # noqa: E402

from lmstudio_lite import load_model  # noqa: E402

SAMPLES = {
    "Story continuation": ["Once upon a time", "Lily wanted to", "The little dog", "One day, Tom found a",
                           "The sun was shining and"],
    "Chat": ["Tell me a story.", "Write a short story about a cat.", "Tell me a short story about the sea.",
             "What is the color of the sky?", "Give me three words that rhyme with cat."],
    "English to French": ["I like my little dog.", "Where is the station?", "We are going home.",
                          "She reads a book.", "It is very cold today."],
    "French to English": ["Je suis très content.", "Il fait beau aujourd'hui.", "Où est mon chat ?",
                          "Nous aimons la musique.", "Elle a deux frères."],
    "Summarize in one sentence": [
        "Tom had a red ball. He played with it all day in the park. At night he was tired and went to bed happy.",
        "Anna saw a small bird on the ground. It could not fly. She gave it water and the bird flew away.",
        "Ben and Mia built a big sand castle at the beach. A wave came and broke it. They laughed and built it again.",
        "The cat was hungry. It looked in the kitchen and found some milk. The cat drank the milk and fell asleep.",
        "Sam lost his blue hat. He looked under the bed and in the garden. His mom found it in the car."],
}
TASK_PREFIX = {"English to French": "Translate English to French:\n", "French to English":
               "Translate French to English:\n", "Summarize in one sentence": "Summarize in one sentence:\n"}


def samples(folder: Path) -> dict:
    m = load_model(folder, device="cpu", dtype="float32")
    out = {}
    for task, prompts in SAMPLES.items():
        rows = []
        for p in prompts:
            if task == "Story continuation":
                text = "".join(m.generate(p, max_new_tokens=60, temperature=0))
            else:
                msgs = [{"role": "user", "content": TASK_PREFIX.get(task, "") + p}]
                text = "".join(m.generate(msgs, max_new_tokens=60, temperature=0))
            rows.append((p, text.strip()))
        out[task] = rows
    return out


def run_summary(runs: list[Path]) -> dict:
    """Steps and time summed over the runs (from scratch, then continued); losses of the last."""
    if not runs:
        return {}
    steps = elapsed = 0
    for run in runs:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        evals = [x for x in lines if x.get("val_loss") is not None]
        steps, elapsed = steps + lines[-1]["step"], elapsed + (lines[-1].get("elapsed_s") or 0)
    first = json.loads((runs[0] / "spec.json").read_text())
    return {"steps": steps, "elapsed_s": elapsed, "train_loss": lines[-1]["loss"],
            "val_loss": evals[-1]["val_loss"] if evals else None, "spec": first,
            "stages": [json.loads((r / "spec.json").read_text()) for r in runs]}


def card(name, ours, ref, run, smp) -> str:
    t = lambda d, k: f"{d['translation'][k]['bleu']:.1f} / {d['translation'][k]['chrf']:.1f}"  # noqa: E731
    s = lambda d, k: f"{d['summarization'][k]['rougeL']:.1f} / {d['summarization'][k]['chrf']:.1f}"  # noqa: E731
    # The front matter's `language:` is what the Translate tab offers first (tasks/translate.card_languages).
    lines = ["---", "language:", "- en", "- fr", "- de", "library_name: transformers", "tags:", "- lmstudio_lite",
             "---", "", f"# {name}", "",
             "The bundled default model of lmstudio_lite: a small Llama-architecture model trained from scratch "
             "with lmstudio_lite's own trainer and a new byte-level BPE tokenizer, on openly licensed data only. "
             "It tells simple TinyStories-style stories, answers in ChatML chat format, translates short "
             "sentences between English and French (and German), and writes one-sentence summaries of short "
             "story passages. It is a toy-sized model: expect simple, often wrong answers.", "",
             "## Evaluation (`python bench/eval_model.py models/lmstudio-lite-tiny ../shared/data/models/stories260K`)",
             "", "| metric | lmstudio-lite-tiny | stories260K (reference) |", "| --- | --- | --- |",
             f"| parameters | {ours['parameters']:,} | {ref['parameters']:,} |",
             f"| bits per byte, TinyStories validation (first 300 paragraphs; lower is better) | "
             f"**{ours['bits_per_byte']:.3f}** | {ref['bits_per_byte']:.3f} |"]
    for k in ours["translation"]:
        lines.append(f"| translation {k}, BLEU / chrF (100 held-out Tatoeba pairs) | {t(ours, k)} | {t(ref, k)} |")
    for k in ours["summarization"]:
        lines.append(f"| summarization {k}, ROUGE-L / chrF | {s(ours, k)} | {s(ref, k)} |")
    lines += ["", "`stories-lead`: one-sentence summaries of held-out TinyStories validation paragraphs against "
              "their lead sentence (templated reference); `qmsum-val`: QMSum validation spans (first 1,500 characters "
              "of the document) against the human summary — far beyond this model.", ""]
    spec = run.get("spec", {})
    stages = "; then ".join(f"{st['steps']} steps at lr {st['lr']:g} on `{Path(st['data']).name}`"
                            + (" from scratch" if st.get("from_scratch") else " continuing it")
                            for st in run.get("stages", []))
    lines += ["## Training", "",
              f"- stages: {stages} (warm-up then cosine decay to 0.1 x lr in each)",
              f"- steps: {run.get('steps')} x batch {spec.get('batch_size')} x {spec.get('seq_len')} tokens; "
              f"final train loss {run.get('train_loss', float('nan')):.3f}, validation loss "
              f"{(run.get('val_loss') or float('nan')):.3f} (nats/token)",
              f"- time: {(run.get('elapsed_s') or 0) / 60:.0f} minutes on {platform.processor() or 'x86_64'} "
              "CPU, 2 cores (AMD Zen 4), bf16 autocast, no GPU",
              "- command: `bash recipes/default_model/train.sh` (the exact steps: sample stories from stories260K, "
              "build the mixture, `lmstudio-lite train --from-scratch ...`, this card)",
              f"- architecture: Llama (RoPE, RMSNorm, SwiGLU), {spec.get('n_layer')} layers, width "
              f"{spec.get('d_model')}, {spec.get('n_head')} heads, context {spec.get('seq_len')}, tied embeddings",
              f"- tokenizer: byte-level BPE, {spec.get('vocab_size')} tokens, trained on the mixture by the "
              "tokenizers library; special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`",
              "- chat template: ChatML (in tokenizer_config.json); generation stops at `<|im_end|>` or `<|endoftext|>`",
              "", "## Task prompts it was trained on", "",
              "- stories: plain text, or chat `Tell me a story.` / `Write a short story about {word}.`",
              "- `Translate English to French:\\n{text}`, `Translate French to English:\\n{text}`, same with German",
              "- `Summarize in one sentence:\\n{passage}` (reference: the passage's first sentence, templated)",
              "- self-instruct seed tasks; `Answer the question from the context.\\n\\nContext: ...\\n\\nQuestion: ...`",
              "", "## Data and licenses", "",
              "| data | license / attribution | use |", "| --- | --- | --- |",
              "| TinyStories train sample (Eldan & Li 2023) | CDLA-Sharing-1.0 | stories (x2), summaries, chat stories |",
              "| 16,000 stories sampled from stories260K (karpathy/tinyllamas, MIT; trained on TinyStories) by "
              "`recipes/default_model/generate_stories.py` | MIT model output, TinyStories-derived | stories |",
              "| Tatoeba en-fr, en-de via manythings.org/anki | CC BY 2.0 FR — \"www.manythings.org/anki and "
              "tatoeba.org\" | translation (1 pair in 40 held out for evaluation) |",
              "| Self-Instruct seed tasks (Wang et al. 2022) | Apache-2.0 | instructions |",
              "| AdversarialQA (Bartolo et al. 2020) via self-instruct | CC BY-SA 3.0 | question answering |",
              "", "Never trained on: `tinystories_valid_sample.txt`, `instructions_eval.jsonl`, held-out Tatoeba "
              "pairs, QMSum. Sources and commits: `../shared/data/README.md` and `MANIFEST.json`.", "",
              "## Sample outputs (greedy)", ""]
    for task, rows in smp.items():
        lines += [f"### {task}", ""]
        for p, out in rows:
            lines += [f"- **{p!r}** → {out!r}"]
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trained")
    p.add_argument("dest")
    p.add_argument("--run", action="append", default=[], help="run folders in order (metrics.jsonl, spec.json)")
    args = p.parse_args()
    src, dest = Path(args.trained), Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("adapter"))
    ours = evaluate(dest, 100)
    ref = evaluate(SHARED / "models" / "stories260K", 100)
    (dest / "eval.json").write_text(json.dumps({"ours": ours, "stories260K": ref}, indent=2, ensure_ascii=False))
    run = run_summary([Path(r) for r in args.run])
    (dest / "README.md").write_text(card(dest.name, ours, ref, run, samples(dest)), encoding="utf-8")
    print((dest / "README.md").read_text())


if __name__ == "__main__":
    main()
