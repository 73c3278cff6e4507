"""Chat prompts: sampling presets, message lists, context accounting, continue-a-reply.

The conversation is a list of ``{"role", "content"}`` dicts with plain-string content; the
system prompt is kept apart and put first when it is not empty. Rendering always goes
through the model's own chat template (``tokenizer.render_chat``), the one path UI, API and
CLI share. When a conversation no longer fits, the oldest turns are dropped (the system
prompt is kept) and the caller is told which ones: nothing is cut silently.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...messages import Message

DEFAULT_SYSTEM = "You are a helpful assistant."
# A message longer than this many characters per context token cannot fit whatever the
# tokenizer does (no vocabulary has tokens this long), so it is refused before tokenizing.
MAX_CHARS_PER_TOKEN = 32


@dataclass
class Settings:
    """Sampling settings shared by chat, summarize and translate."""
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256
    seed: int | None = None  # None: a fresh random seed per reply
    stop: list[str] = field(default_factory=list)

    def generate_kwargs(self) -> dict:
        d = asdict(self)
        d["max_new_tokens"] = max(1, int(d["max_new_tokens"]))
        d["top_k"] = int(d["top_k"])
        return d


PRESETS: dict[str, Settings] = {
    "Balanced": Settings(),
    "Creative": Settings(temperature=1.0, top_p=0.95, top_k=0, min_p=0.02, repetition_penalty=1.05),
    # Greedy decoding: the same prompt gives the same reply every time.
    "Precise": Settings(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, seed=0),
}


def parse_stop(text: str | None) -> list[str]:
    """Stop strings, one per line; ``\\n`` and ``\\t`` written out stand for newline and tab."""
    out = []
    for line in (text or "").splitlines():
        if line.strip():
            out.append(line.replace("\\n", "\n").replace("\\t", "\t"))
    return out


def make_settings(temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop) -> Settings:
    """Settings from raw widget values (a negative or empty seed means random)."""
    seed = None if seed is None or seed == "" or int(seed) < 0 else int(seed)
    stops = parse_stop(stop) if isinstance(stop, str) or stop is None else [s for s in stop if s]
    return Settings(float(temperature), float(top_p), int(top_k), float(min_p), float(repetition_penalty),
                    int(max_new_tokens), seed, stops)


def build_messages(system: str | None, history: list[dict]) -> list[dict]:
    """The message list for the template: the system prompt (if any) and then the turns."""
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    return msgs + [{"role": m["role"], "content": m["content"]} for m in history]


def turn_numbers(messages: list[dict], indexes: list[int]) -> list[int]:
    """Indexes into ``messages`` -> 1-based turn numbers counted without the system prompt."""
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    return [i - offset + 1 for i in indexes]


def describe_dropped(messages: list[dict], dropped: list[int]) -> str:
    """'messages 1–4 (the oldest)' — what a truncation leaves out, in words (a Message, '' for nothing)."""
    nums = turn_numbers(messages, dropped)
    if not nums:
        return ""
    if len(nums) == 1:
        return Message("chat.dropped_one", n=nums[0])
    return Message("chat.dropped_span", first=nums[0], last=nums[-1])


def too_long_for(context_length: int, text: str) -> bool:
    """Cheap bound: True when ``text`` cannot fit in the context whatever it tokenizes to."""
    return len(text) > context_length * MAX_CHARS_PER_TOKEN


@dataclass
class ContextReport:
    """How the context window divides: the prompt, the room its reply may use, and what is free."""
    used: int  # prompt tokens that would be sent (after any dropping)
    limit: int
    reserve: int  # room generation keeps for the reply when it drops turns
    dropped: list[int] = field(default_factory=list)  # message indexes that would be left out
    error: str | None = None  # the newest message alone does not fit: it cannot be sent
    max_new: int = 0  # the reply's token limit asked for

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def reply(self) -> int:
        """Tokens the reply may use: its limit, or less when the context ends first."""
        return min(self.max_new, self.left)

    @property
    def free(self) -> int:
        return self.left - self.reply


def context_report(model, messages: list[dict], max_new_tokens: int, sending: bool = True) -> ContextReport:
    """How the conversation fits the model's context, using the same rule as generation.

    ``sending=False`` measures a conversation with no new message typed: nothing would be sent, so
    a turn too long to answer again is no error (the next message leaves the older turns out)."""
    from ...generation import ContextOverflowError

    limit, max_new = model.context_length, max(1, int(max_new_tokens))
    reserve = max(1, min(max_new, limit // 2))
    if not messages:
        return ContextReport(0, limit, reserve, max_new=max_new)
    if too_long_for(limit, messages[-1]["content"]):
        return ContextReport(limit, limit, reserve, max_new=max_new, error=Message(
            "chat.err_last_too_long", chars=f"{len(messages[-1]['content']):,}", limit=f"{limit:,}")
            if sending else None)
    try:
        prepared = model.prepare(messages, max_new, on_overflow="truncate")
    except ContextOverflowError as e:
        return ContextReport(min(e.prompt_tokens, limit), limit, reserve, max_new=max_new, error=Message(
            "chat.err_last_needs", n=f"{e.prompt_tokens:,}", limit=f"{limit:,}", reserve=f"{reserve:,}")
            if sending else None)
    return ContextReport(len(prepared.ids), limit, reserve, list(prepared.dropped_turns), max_new=max_new)


def continue_prompt(tokenizer, messages: list[dict]) -> str:
    """The rendered prompt that ends inside the last (assistant) message, so the model goes on
    writing it (like transformers' ``continue_final_message``): render without a generation
    prompt and cut everything the template put after the message's text."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(Message("chat.err_no_reply_to_continue"))
    text = tokenizer.render_chat(messages, add_generation_prompt=False)
    last = messages[-1]["content"]
    cut = text.rfind(last) if last else -1
    if cut < 0:  # an empty or reformatted reply: continue after the assistant header
        head = tokenizer.render_chat(messages[:-1], add_generation_prompt=True)
        return head if text.startswith(head) else text
    return text[: cut + len(last)]


def plain_prompt(tokenizer, rendered: str) -> str:
    """A rendered chat prompt as text for ``generate(str)``, which encodes with special tokens:
    drop the template's BOS when the tokenizer adds one itself, so it is not doubled."""
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos) and tokenizer.bos_id is not None:
        probe = tokenizer.encode("a")
        if probe and probe[0] == tokenizer.bos_id:
            return rendered[len(bos):]
    return rendered
