"""See inside the loaded model: tokens, next-token probabilities, attention, the logit lens.

Plain data out (dataclasses of ints, strings and floats), so the Inspect tab and the Chat
tab's probability colours only draw. Everything runs on the loaded model's own weights
(float, bf16 or quantized, a folder or a GGUF file) in forwards without a cache; only a
"what if" branch generates, through the engine like any reply. The lens and attention go
through ``Transformer.trace``, which keeps what a forward throws away; attention weights
come from the reference attention path (SDPA never materializes them) and are computed only
when asked for, one layer at a time.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ...generation import SamplingParams
from ...messages import Message
from ...threads import release_thread_team, use_inference_threads
from .chat import MAX_CHARS_PER_TOKEN

MAX_TOKENS = 256  # the heatmap is T x T and the lens n_layer x T: beyond this neither reads well
TOP = 10
BRANCH_TOKENS = 16  # a "what if" continuation: enough to see where a choice leads


class InspectError(ValueError):
    """A text the Inspect tab cannot show (empty, over the cap); the message says why."""


@dataclass
class Candidate:
    id: int
    text: str
    prob: float


@dataclass
class Position:
    """Token ``index`` of the text and the model's guess for the token after it."""
    index: int
    id: int
    text: str  # the piece as the tokenizer has it (a byte-fallback piece shows as <0xHH>)
    nbytes: int
    top: list[Candidate]
    next_id: int | None = None  # the text's actual next token (None at the end)
    next_prob: float | None = None
    next_rank: int | None = None  # 1 = the model's first choice

    @property
    def surprise_bits(self) -> float | None:
        """-log2 p(actual next token): how surprised the model is by what came."""
        if self.next_prob is None:
            return None
        return -math.log2(max(self.next_prob, 1e-45))


@dataclass
class Analysis:
    text: str
    ids: list[int]
    positions: list[Position]

    @property
    def cross_entropy(self) -> float | None:
        """Mean -ln p over the tokens the model predicted (every one after the first), in nats."""
        probs = [p.next_prob for p in self.positions if p.next_prob is not None]
        if not probs:
            return None
        return -sum(math.log(max(p, 1e-45)) for p in probs) / len(probs)

    @property
    def perplexity(self) -> float | None:
        ce = self.cross_entropy
        return None if ce is None else math.exp(ce)


def token_cap(model) -> int:
    return min(MAX_TOKENS, model.context_length)


def encode(model, text: str) -> list[int]:
    """The text's ids, or InspectError naming the cap. A text that already starts with the
    BOS token (a rendered chat) gets no second one."""
    if not (text or "").strip():
        raise InspectError(Message("inspect.err_empty"))
    cap = token_cap(model)
    if len(text) > cap * MAX_CHARS_PER_TOKEN:  # far over whatever the tokenizer does
        raise InspectError(Message("inspect.err_too_long", cap=cap,
                                   size=Message("inspect.n_chars", n=f"{len(text):,}")))
    tok = model.tokenizer
    bos = tok.bos_token
    ids = tok.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
    if len(ids) > cap:
        raise InspectError(Message("inspect.err_too_long", cap=cap,
                                   size=Message("inspect.n_tokens", n=f"{len(ids):,}")))
    return ids


@contextlib.contextmanager
def _inference(model):
    """inference_mode on the threads a generation may use, as the engine does (a training job
    may hold the rest; torch's setting is per calling thread on this build); after, this thread's
    OpenMP workers go, so they do not slow the scheduler's thread (threads.release_thread_team)."""
    use_inference_threads(model.device)
    try:
        with torch.inference_mode():
            yield
    finally:
        release_thread_team()


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Residual stream [.., C] -> float32 logits [.., V] through the final norm and the head."""
    net = model.model
    return net.project(net.norm_f(hidden)).float()


def _candidates(tok, probs: torch.Tensor, k: int) -> list[Candidate]:
    values, idx = probs.topk(min(k, probs.shape[-1]))
    ids = idx.tolist()
    return [Candidate(i, s, float(p)) for i, s, p in zip(ids, tok.token_strings(ids), values.tolist())]


def analyze(model, text: str, top: int = TOP) -> Analysis:
    """Tokens, and each position's top ``top`` next tokens and the actual one's probability and rank."""
    ids = encode(model, text)
    tok = model.tokenizer
    with _inference(model):
        probs = torch.softmax(model.model(torch.tensor([ids], device=model.device))[0].float(), dim=-1)  # [T, V]
        positions = []
        for i, (tid, piece, raw) in enumerate(zip(ids, tok.token_strings(ids), tok.token_bytes(ids))):
            pos = Position(i, tid, piece, len(raw), _candidates(tok, probs[i], top))
            if i + 1 < len(ids):
                pos.next_id = ids[i + 1]
                pos.next_prob = float(probs[i, pos.next_id])
                pos.next_rank = int((probs[i] > probs[i, pos.next_id]).sum()) + 1
            positions.append(pos)
    return Analysis(text, ids, positions)


def logit_lens(model, text: str) -> list[list[Candidate]]:
    """[layer][position]: each block's residual stream read through the final norm and the head,
    its top next token and that token's probability. The last layer is the model's own
    prediction. On request only: it costs a head projection per layer."""
    ids = encode(model, text)
    T, V = len(ids), model.config.vocab_size
    # Several layers per projection (a quantized head is dequantized once per call), within
    # ~64 MB of float32 logits at a time.
    group = max(1, (1 << 24) // (V * T))
    best, top = [], []
    with _inference(model):
        hidden, _ = model.model.trace(torch.tensor([ids], device=model.device))
        for g in range(0, len(hidden), group):
            rows = torch.cat([h[0] for h in hidden[g:g + group]])  # [k*T, C]
            p, i = torch.softmax(_logits(model, rows), dim=-1).max(dim=-1)
            best += p.view(-1, T).tolist()
            top += i.view(-1, T).tolist()
    tok = model.tokenizer
    return [[Candidate(i, s, p) for i, s, p in zip(ids_l, tok.token_strings(ids_l), probs_l)]
            for ids_l, probs_l in zip(top, best)]


def attention(model, text: str, layer: int, head: int | None = None) -> list[list[float]]:
    """Layer ``layer``'s attention weights [query][key] over the text's tokens, for one head
    or (``head`` None) the mean over heads. Each row sums to 1; keys after the query are 0."""
    if head is not None and not 0 <= head < model.config.n_head:
        raise InspectError(Message("inspect.err_no_head", head=head, last=model.config.n_head - 1))
    w = attention_heads(model, text, layer)
    return (w.mean(0) if head is None else w[head]).tolist()


def attention_heads(model, text: str, layer: int) -> torch.Tensor:
    """Every head of one layer: float32 [H, T, T] on the CPU."""
    n_layer = model.config.n_layer
    if not 0 <= layer < n_layer:
        raise InspectError(Message("inspect.err_no_layer", layer=layer, last=n_layer - 1))
    ids = encode(model, text)
    with _inference(model):
        _, attn = model.model.trace(torch.tensor([ids], device=model.device), attention_layers=(layer,))
    return attn[layer][0].cpu()


def branch(model, text: str, index: int, token_id: int, max_new: int = BRANCH_TOKENS) -> tuple[str, str]:
    """"What if": the text's tokens up to position ``index``, then ``token_id`` instead of what
    came, then a greedy continuation of up to ``max_new`` tokens.
    -> (the text up to ``index``, the new text from ``token_id`` on), both decoded."""
    ids = encode(model, text)
    if not 0 <= index < len(ids):
        raise InspectError(Message("inspect.err_no_position", index=index, n=len(ids)))
    if not 0 <= token_id < model.config.vocab_size:
        raise InspectError(Message("inspect.err_no_token", id=token_id))
    seq = ids[:index + 1] + [token_id]
    steps = min(max_new, model.context_length - len(seq))
    if steps > 0:
        # Through the engine, which alone generates: greedy, serialized with chat and the API.
        new = model.engine.generate_ids(seq, SamplingParams(temperature=0.0), steps)
        eos = set(model.tokenizer.eos_ids)
        seq += [t for t in new if t not in eos]
    tok = model.tokenizer
    prefix = tok.decode(ids[:index + 1], skip_special_tokens=False)
    full = tok.decode(seq, skip_special_tokens=False)
    # A character split across the branch point decodes whole only in ``full``.
    keep = len(prefix) if full.startswith(prefix) else len(prefix.rstrip("\ufffd"))
    return full[:keep], full[keep:]


@dataclass
class ReplyToken:
    """One piece of a chat reply as shown: its text (whole characters), probability, alternatives."""
    text: str
    prob: float
    alternatives: list[Candidate]


def reply_probabilities(model, messages: list[dict], reply: str, top: int = 5) -> list[ReplyToken]:
    """Teacher-forced: one forward over the chat prompt (``messages``, with the generation
    prompt) and ``reply``, -> each reply token's probability and the ``top`` alternatives.
    The prompt is cut from the left when both do not fit the context. Tokens that end inside
    a UTF-8 character are merged into the piece that completes it."""
    tok = model.tokenizer
    prompt_text = tok.render_chat(messages, add_generation_prompt=True)
    prompt = tok.encode(prompt_text, add_special_tokens=False)
    joint = tok.encode(prompt_text + reply, add_special_tokens=False)
    # Encoded together, a reply's first piece joins as the model wrote it (no word-start space).
    reply_ids = joint[len(prompt):] if joint[:len(prompt)] == prompt else tok.encode(reply, add_special_tokens=False)
    if not reply_ids:
        return []
    reply_ids = reply_ids[:model.context_length - 1]
    if not prompt:
        raise InspectError(Message("inspect.err_empty_prompt"))
    prompt = prompt[-(model.context_length - len(reply_ids)):]
    seq = prompt + reply_ids
    net = model.model
    with _inference(model):
        h = net.forward_hidden(torch.tensor([seq], device=model.device))[0]
        rows = h[len(prompt) - 1:len(seq) - 1]  # the rows that predict the reply's tokens
        probs = torch.softmax(net.project(rows).float(), dim=-1)
    out, stream, pending = [], tok.decode_stream(skip_special_tokens=False), []
    for i, tid in enumerate(reply_ids):
        pending.append((float(probs[i, tid]), _candidates(tok, probs[i], top)))
        piece = stream.step(tid)
        if piece is None:
            continue
        # Merged bytes of one character: show the least likely of them (the surprise is in there).
        p, alts = min(pending, key=lambda x: x[0])
        out.append(ReplyToken(piece, p, alts))
        pending = []
    return out


def chat_text(model, messages: list[dict]) -> str:
    """What the Chat tab's Inspect sends: the conversation as the model reads it (its chat
    template), or, when that is over the cap, the last exchange, or else the last message."""
    if not messages:
        raise InspectError(Message("inspect.err_empty_chat"))
    tok, cap = model.tokenizer, token_cap(model)
    tail = [m for m in messages[-2:] if m.get("role") != "system"]
    for candidate in (messages, tail):
        try:
            text = tok.render_chat(candidate, add_generation_prompt=False)
        except Exception:  # a template that refuses this shape (say, no user turn): try the next
            continue
        if len(text) <= cap * MAX_CHARS_PER_TOKEN and len(tok.encode(text, add_special_tokens=False)) < cap:
            return text
    return messages[-1]["content"]
