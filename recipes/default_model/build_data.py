"""Build the training mixture for the bundled model as one `.jsonl` of `text` rows.

    python recipes/default_model/build_data.py OUT.jsonl [--generated generated_stories.txt]

Every row is one document. Stories are plain text; task examples are rendered
in the model's ChatML chat template (the same template shipped in its
tokenizer_config.json), so training and chat share one format. Held-out rows
(recipes/heldout.py) and instructions_eval.jsonl are never used. Task prompts:

- ``Translate English to French:\\n{en}`` -> ``{fr}`` (and French to English,
  English to German, German to English)
- ``Summarize in one sentence:\\n{story}`` -> the story's first sentence (templated)
- ``Tell me a story.`` / ``Write a short story about {word}.`` -> a TinyStories story
- self-instruct seed tasks and AdversarialQA ("Answer the question from the context")
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heldout import SHARED, lead_sentence, split_pairs, train_stories  # noqa: E402

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chat(user: str, answer: str) -> str:
    """ChatML rendering identical to CHATML for a two-turn conversation."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"


def translation_rows(rng, name, lang, n_each):
    train, _ = split_pairs(name)
    rng.shuffle(train)
    rows = []
    for en, other in train[:n_each]:
        rows.append(chat(f"Translate English to {lang}:\n{en}", other))
    for en, other in train[n_each:2 * n_each]:
        rows.append(chat(f"Translate {lang} to English:\n{other}", en))
    return rows


def story_task_rows(rng, stories):
    rows = []
    for s in stories:
        if len(s) < 1200 and rng.random() < 0.5:
            rows.append(chat(f"Summarize in one sentence:\n{s}", lead_sentence(s)))
    for s in rng.sample(stories, min(800, len(stories))):
        words = [w.strip(".,!?\"'").lower() for w in s.split() if len(w) > 4]
        topic = rng.choice(words) if words else "a friend"
        ask = rng.choice(["Tell me a story.", f"Write a short story about {topic}.", "Tell me a short story."])
        rows.append(chat(ask, s))
    return rows


def instruction_rows():
    rows = []
    for line in (SHARED / "instructions.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        r = json.loads(line)
        user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        rows.append(chat(user, r["output"]))
    for line in (SHARED / "qa.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        r = json.loads(line)
        if r["context"] and len(r["context"]) < 1500:
            rows.append(chat(f"Answer the question from the context.\n\nContext: {r['context']}\n\n"
                             f"Question: {r['question']}", r["answer"]))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--generated", default=None, help="stories sampled by generate_stories.py")
    p.add_argument("--fr-pairs", type=int, default=12000, help="pairs per direction")
    p.add_argument("--de-pairs", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stories-only", action="store_true", help="only the stories (for the last, story stage)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    stories = train_stories()
    rows = stories * 2  # the real stories weigh twice the sampled ones
    if args.generated:
        gen = Path(args.generated).read_text(encoding="utf-8").split("<|endoftext|>")
        rows += [g.strip() for g in gen if g.strip()]
    if args.stories_only:
        return write_rows(args.out, rows, rng)
    rows += translation_rows(rng, "translation_en_fr.tsv", "French", args.fr_pairs)
    rows += translation_rows(rng, "translation_en_de.tsv", "German", args.de_pairs)
    rows += story_task_rows(rng, stories) + instruction_rows() * 2
    write_rows(args.out, rows, rng)


def write_rows(out: str, rows: list[str], rng):
    rng.shuffle(rows)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"text": r}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows, {sum(len(r) for r in rows) / 1e6:.1f} MB of text -> {out}")


if __name__ == "__main__":
    main()
