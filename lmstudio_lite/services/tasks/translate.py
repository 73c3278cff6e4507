"""Translation as chat prompts, paragraph by paragraph, with a script-based language guess.

The prompt for each paragraph (``{src}``/``{tgt}`` are language names such as ``English``)::

    system: You are a translator. Translate the user's text from {src} to {tgt}.
            Reply with the translation only, keeping the meaning, tone and formatting.
    user:   Translate {src} to {tgt}:
            {text}

The user line matches the "Translate English to French:" prompts the bundled model was
trained on (inside its chat template), and reads naturally to any instruct model.
Long texts are translated one paragraph at a time (a paragraph too long for the context
is cut at sentence boundaries) and joined with blank lines, so the output keeps the
input's paragraphs.

``detect_language`` is a heuristic, not a classifier: the script decides for Japanese
(kana), Korean (hangul), Chinese (Han characters without kana) and Russian (Cyrillic);
for Latin-script text, common function words and accented letters pick among English,
French, German, Spanish, Italian and Portuguese.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ...messages import Message
from .text import Step, paragraphs, prompt_overhead, run_messages, split_text, token_counter

AUTO = "Auto-detect"
LANGUAGES = ["English", "French", "German", "Spanish", "Italian", "Portuguese", "Chinese", "Japanese",
             "Korean", "Russian"]
# ISO 639-1 codes, as a model card's metadata (the Hub's `language:` list) names languages.
CODES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
         "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ru": "Russian"}
MAY_NOT_WORK = "may not work with this model"
SYSTEM = ("You are a translator. Translate the user's text from {src} to {tgt}. "
          "Reply with the translation only, keeping the meaning, tone and formatting.")

_WORDS = {
    "English": ("the and is are was of to in that it you with for this have not be on i he she we they my your his "
                "her had has were would can what when there at from but by all"),
    "French": "le la les des est et une un que qui dans pour pas avec sur je vous nous ce au du",
    "German": "der die das und ist nicht ein eine ich sie mit zu den von auf für auch sich dem",
    "Spanish": "el la los las es y que de en un una por para con no se lo del al muy",
    "Italian": "il lo la gli le è e che di un una per con non sono della del al questo",
    "Portuguese": "o a os as é e que de em um uma para com não se do da no na muito",
}
_LETTERS = {"French": "éèêàçœùûîôë", "German": "äöüß", "Spanish": "ñ¿¡áíóú", "Portuguese": "ãõâçáéó",
            "Italian": "àèìòù"}
_WORD_SETS = {lang: set(words.split()) for lang, words in _WORDS.items()}
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def _count_range(text: str, lo: int, hi: int) -> int:
    return sum(1 for ch in text if lo <= ord(ch) <= hi)


def detect_language(text: str) -> str | None:
    """A best guess at the language of ``text`` (one of ``LANGUAGES``), or None with no letters."""
    sample = text[:4000]
    kana = _count_range(sample, 0x3040, 0x30FF)
    hangul = _count_range(sample, 0xAC00, 0xD7AF) + _count_range(sample, 0x1100, 0x11FF)
    han = _count_range(sample, 0x4E00, 0x9FFF) + _count_range(sample, 0x3400, 0x4DBF)
    cyrillic = _count_range(sample, 0x0400, 0x04FF)
    words = [w.lower() for w in _WORD_RE.findall(sample)]
    latin = sum(len(w) for w in words if w.isascii() or any(c in w for c in "".join(_LETTERS.values())))
    scripts = {"Japanese": kana * 3 if kana else 0, "Korean": hangul, "Chinese": han if not kana else 0,
               "Russian": cyrillic}
    best_script = max(scripts, key=scripts.get)
    if scripts[best_script] and scripts[best_script] * 2 >= latin:
        return "Japanese" if best_script == "Chinese" and kana else best_script
    if not words:
        return None
    scores = {lang: sum(w in vocab for w in words) for lang, vocab in _WORD_SETS.items()}
    lowered = sample.lower()
    for lang, letters in _LETTERS.items():
        scores[lang] += 0.5 * sum(lowered.count(c) for c in letters)
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else "English"


def card_languages(folder) -> list[str] | None:
    """The languages a model's card names in its metadata (``language:`` in README.md's front matter),
    in ``LANGUAGES`` order; None when there is no card or it does not say."""
    try:
        text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, TypeError):
        return None
    codes = _front_matter_list(text, "language")
    if codes is None:
        return None
    named = {CODES.get(c.lower().split("-")[0], c) for c in codes}
    return [lang for lang in LANGUAGES if lang in named]


def _front_matter_list(text: str, key: str) -> list[str] | None:
    """``key``'s values in a YAML front matter block, as the Hub writes them: ``key: en``,
    ``key: [en, fr]`` or one ``- en`` line per value. Just enough YAML: no parser is needed for it."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    block = lines[1:lines.index("---", 1)] if "---" in lines[1:] else []
    for i, line in enumerate(block):
        if line.startswith(f"{key}:"):
            inline = line[len(key) + 1:].strip().strip("[]")
            if inline:
                return [v.strip().strip("'\"") for v in inline.split(",") if v.strip()]
            items = []
            for item in block[i + 1:]:
                if not item.lstrip().startswith("- "):
                    break
                items.append(item.lstrip()[2:].strip().strip("'\""))
            return items
    return None


def language_choices(known: list[str] | None) -> list[tuple[str, str]]:
    """(label, value) choices: the languages the model knows first, then the others marked as such.
    With no word from the model card, every language is offered plainly."""
    if not known:
        return [(lang, lang) for lang in LANGUAGES]
    return [(lang, lang) for lang in known] + [(f"{lang} ({MAY_NOT_WORK})", lang) for lang in LANGUAGES
                                               if lang not in known]


def untried(known: list[str] | None, *languages: str) -> str | None:
    """A note when a language asked for is not one the model card names (None when all are, or it is silent)."""
    off = [lang for lang in languages if known and lang not in known]
    if not off:
        return None
    return (f"{' and '.join(dict.fromkeys(off))} {MAY_NOT_WORK}: its card names {', '.join(known)} only. "
            "The translation below may be poor.")


def translate_messages(text: str, src: str, tgt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM.format(src=src, tgt=tgt)},
            {"role": "user", "content": f"Translate {src} to {tgt}:\n{text}"}]


def language_name(name: str):
    """A language's name, said in the page's language where we know it (a Message), else as it is."""
    return Message(f"lang.{name}") if name in LANGUAGES else name


def resolve_source(text: str, src: str) -> str:
    """The source language name; Auto-detect falls back to English when unsure."""
    if src != AUTO:
        return src
    return detect_language(text) or "English"


def piece_budget(model, src: str, tgt: str) -> int:
    """Source tokens per request, leaving room for a translation somewhat longer than its source."""
    overhead = prompt_overhead(model, lambda t: translate_messages(t, src, tgt))
    budget = int((model.context_length - overhead) / 2.5)
    if budget < 8:
        raise ValueError(Message("trans.err_small_context", n=model.context_length))
    return budget


def pieces(model, text: str, src: str, tgt: str) -> list[list[str]]:
    """Paragraphs, each as the list of pieces (usually one) that fit a request."""
    count, budget = token_counter(model.tokenizer), piece_budget(model, src, tgt)
    return [split_text(p, count, budget) for p in paragraphs(text)]


def piece_stop(piece: str) -> str:
    """Where a translation of ``piece`` is over: a line break for a one-line piece, a blank line
    for one of several lines (pieces never hold a blank line). Chat models such as SmolLM2 go on
    after the translated sentence ("\n\nIn this context, ...") instead of ending their turn."""
    return "\n\n" if "\n" in piece.strip() else "\n"


def cut_at_stop(out: str, stop: str) -> tuple[str, bool]:
    """(``out`` up to ``stop``, whether it was there), looking past leading whitespace only, so a
    reply that opens with a line break is not cut to nothing."""
    body = out.lstrip()
    at = body.find(stop)
    return (out, False) if at < 0 else (body[:at], True)


def translate(model, text: str, src: str, tgt: str, settings, cancel=None) -> Iterator[Step]:
    """Stream the translation: ``Step``s whose text is everything translated so far."""
    if not text or not text.strip():
        raise ValueError(Message("trans.err_no_text"))
    src = resolve_source(text, src)
    if src == tgt:
        yield Step(1, 1, Message("sum.step_done"), text.strip(), final=True)
        return
    paras = pieces(model, text, src, tgt)
    total = sum(len(p) for p in paras)
    done_paras: list[str] = []
    n = 0
    for para in paras:
        current = []
        for piece in para:
            desc = Message("trans.step_part", i=n + 1, n=total, src=language_name(src), tgt=language_name(tgt))
            out, stop = "", piece_stop(piece)
            deltas = run_messages(model, translate_messages(piece, src, tgt), settings, cancel=cancel)
            try:
                for delta in deltas:
                    out, over = cut_at_stop(out + delta, stop)
                    yield Step(n, total, desc, _join(done_paras, current + [out]))
                    if over:
                        break
            finally:
                deltas.close()  # ends the generation when the translation stopped early
            current.append(out.strip())
            n += 1
            if cancel is not None and cancel.is_set():
                return
        done_paras.append(" ".join(current))
    yield Step(total, total, Message("trans.step_done", src=language_name(src), tgt=language_name(tgt)),
               _join(done_paras, []), final=True)


def _join(done: list[str], current: list[str]) -> str:
    return "\n\n".join(done + ([" ".join(current)] if current else []))
