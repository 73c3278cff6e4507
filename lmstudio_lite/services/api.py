"""The public API: ``load_model(path) -> LoadedModel``.

Used by the app, the OpenAI server, the CLI and outside scripts::

    from lmstudio_lite import load_model
    m = load_model("models/lmstudio-lite-tiny", device="cpu", dtype="float32")
    for delta in m.generate("Once upon a time", max_new_tokens=32): print(delta, end="")
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import native
from ..checkpoints.folder import load_weights, read_config
from ..checkpoints import is_gguf_file
from ..checkpoints.gguf_weights import load_gguf
from ..checkpoints.quant_cache import load_quantized
from ..checkpoints.tokenizer import Tokenizer
from ..device import DeviceChoice, choose_device
from ..generation import ContextOverflowError, Engine, SamplingParams, Scheduler, TextStream
from ..messages import Message
from ..model.inference import InferenceModel
from ..model.quant import check_qtype, quantize_model, weight_bytes, weight_format
from ..threads import release_thread_team


@dataclass
class PreparedPrompt:
    """Prompt ids and what was cut to fit the context window (never silent)."""
    ids: list[int]
    dropped_turns: list[int] = field(default_factory=list)  # indexes into the original messages
    truncated_tokens: int = 0


class LoadedModel:
    """A model folder loaded for inference: weights, tokenizer and an engine.
    ``model`` is the ``InferenceModel`` the engine drives (its ``net``: the ``Transformer``)."""

    def __init__(self, path: Path, model: InferenceModel, tokenizer: Tokenizer, choice: DeviceChoice,
                 hf_config: dict, quant: str | None = None, quant_cache: str = "none"):
        self.path, self.model, self.tokenizer, self.choice = path, model, tokenizer, choice
        self.config, self.hf_config = model.config, hf_config
        self.quant = quant  # what was asked for: None or a qtype
        self.quant_cache = quant_cache  # "hit": blocks read from the cache; "written": quantized now; "none"
        self.weight_bytes = weight_bytes(model.net, model.extra_weights())
        # The scheduler drives the model for every caller (batching, prompt cache);
        # LMSTUDIO_LITE_SCHEDULER=off brings back the plain one-at-a-time queue (bench/serve.py compares).
        plain = os.environ.get("LMSTUDIO_LITE_SCHEDULER", "").strip().lower() in ("off", "0", "plain")
        self.engine = Engine(model, tokenizer) if plain else Scheduler(model, tokenizer)
        self.name = path.name

    @property
    def device(self) -> torch.device:
        return self.choice.device

    @property
    def context_length(self) -> int:
        return self.config.max_seq_len

    @property
    def max_prompt_chars(self) -> int:
        """The most characters a prompt that fits the context can have: context length times the
        longest vocabulary entry (a BPE or SentencePiece token never covers more characters than
        its vocabulary string has). Longer prompts are refused before tokenizing them."""
        if getattr(self, "_max_prompt_chars", None) is None:
            longest = max((len(t) for t in self.tokenizer.backend.get_vocab(with_added_tokens=True)), default=1)
            self._max_prompt_chars = self.context_length * max(1, longest)
        return self._max_prompt_chars

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """LongTensor [B, T] -> FloatTensor [B, T, vocab] (float32)."""
        with torch.inference_mode():
            return self.model(input_ids.to(self.device)).float().cpu()

    # -- prompts -----------------------------------------------------------------
    def prompt_ids(self, prompt_or_messages) -> list[int]:
        if isinstance(prompt_or_messages, str):
            return self.tokenizer.encode(prompt_or_messages)
        return self.tokenizer.encode_chat(list(prompt_or_messages), add_generation_prompt=True)

    def prepare(self, prompt_or_messages, max_new_tokens: int = 256, on_overflow: str = "error") -> PreparedPrompt:
        """Encode and check the context window. ``on_overflow="truncate"`` drops the
        oldest turns (keeping a system prompt) or, for text, the oldest tokens."""
        if on_overflow not in ("error", "truncate"):
            raise ValueError(Message("gen.err_on_overflow"))
        ids = self.prompt_ids(prompt_or_messages)
        ctx = self.context_length
        if len(ids) < ctx:
            return PreparedPrompt(ids)
        if on_overflow == "error":
            raise ContextOverflowError(len(ids), ctx)
        budget = ctx - max(1, min(max_new_tokens, ctx // 2))
        if isinstance(prompt_or_messages, str):
            keep = ids[-budget:]
            if self.tokenizer.bos_id is not None and ids and ids[0] == self.tokenizer.bos_id:
                keep = [ids[0]] + ids[-(budget - 1):]
            return PreparedPrompt(keep, truncated_tokens=len(ids) - len(keep))
        return self._drop_turns(list(prompt_or_messages), budget)

    def _drop_turns(self, messages: list[dict], budget: int) -> PreparedPrompt:
        order = [i for i, m in enumerate(messages) if m.get("role") != "system"]
        dropped: list[int] = []
        # Keep the newest turn always: without it there is nothing to answer.
        while len(order) > 1:
            dropped.append(order.pop(0))
            kept = [m for i, m in enumerate(messages) if i not in dropped]
            ids = self.prompt_ids(kept)
            if len(ids) <= budget:
                return PreparedPrompt(ids, dropped_turns=dropped)
        ids = self.prompt_ids([m for i, m in enumerate(messages) if i not in dropped])
        raise ContextOverflowError(len(ids), self.context_length)

    # -- generation --------------------------------------------------------------
    def generate(self, prompt_or_messages, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 seed: int | None = None, stop=(), ignore_eos: bool = False, on_overflow: str = "error",
                 cancel: threading.Event | None = None, logprobs: int | None = None) -> TextStream:
        """Stream text deltas; ``stream.stats`` holds counts, timings and what was cut.
        ``logprobs`` (None, or 0..20 alternatives) fills ``stream.logprobs`` (see ``Scheduler.stream``)."""
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, seed=seed)
        if max_new_tokens < 1:
            raise ValueError(Message("gen.err_max_new_min"))
        prepared = self.prepare(prompt_or_messages, max_new_tokens, on_overflow)
        extra = {}
        if logprobs is not None:
            if not isinstance(self.engine, Scheduler):
                raise ValueError(Message("gen.err_logprobs_scheduler"))
            extra["logprobs"] = logprobs
        stream = self.engine.stream(prepared.ids, params, max_new_tokens, stop=list(stop or ()),
                                    ignore_eos=ignore_eos, cancel=cancel, **extra)
        stream.stats["dropped_turns"] = prepared.dropped_turns
        stream.stats["truncated_tokens"] = prepared.truncated_tokens
        return stream

    def info(self) -> dict:
        cfg = self.config
        return {"name": self.name, "path": str(self.path), "family": self.hf_config.get("model_type", cfg.family),
                "format": self.hf_config.get("format", "folder"),
                "parameters": cfg.num_parameters(), "context_length": cfg.max_seq_len,
                "dtype": str(self.choice.dtype).removeprefix("torch."), "device": self.choice.name,
                "device_reason": self.choice.reason, "has_chat_template": self.tokenizer.has_chat_template,
                "quant": weight_format(self.model.net), "quant_cache": self.quant_cache,
                "weights_bytes": self.weight_bytes,
                "scheduler": self.engine.info() if isinstance(self.engine, Scheduler) else None,
                "decode_kernel": f"native C step ({weight_format(self.model.net)} weights, 1-8 rows)"
                if self.model.native is not None
                else "pytorch" + ("" if native.status() == "on" else f" (native kernel {native.status()})")}


def load_model(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
               quant: str | None = None) -> LoadedModel:
    """Load a Hugging Face layout folder (gpt2, llama, qwen2, mistral) or a GGUF file
    (llama, qwen2, gpt2 architectures) for inference.

    ``quant`` ("q8_0", "q4_0", "q4_1") quantizes the blocks' linear layers (and the
    head to q8_0) in GGUF's block formats; the blocks are cached under the user cache
    folder, so only the first load of a folder in a format pays for quantizing. A GGUF
    file's Q8_0/Q4_0/Q4_1 layers stay as they are; ``quant`` quantizes its float ones.
    Raises ``CheckpointError`` naming the file and the problem when the model is unusable.
    """
    try:
        return _load(path, device, dtype, quant)
    finally:  # generation runs in the scheduler's thread: this one's OpenMP team would slow it down
        release_thread_team()


def _load(path, device, dtype, quant) -> LoadedModel:
    if quant is not None:
        check_qtype(quant)
    path = Path(path).expanduser().resolve()
    choice = choose_device(device, dtype)
    if path.suffix.lower() == ".gguf" or is_gguf_file(path):  # by suffix too, so a broken file says why
        loaded = load_gguf(path, device=choice.device, dtype=choice.dtype)
        if quant is not None:
            quantize_model(loaded.model, quant)  # swaps float Linears only: the file's blocks stay
        return LoadedModel(path, InferenceModel(loaded.model), loaded.tokenizer, choice, loaded.description, quant=quant)
    cfg, hf = read_config(path)
    tokenizer = Tokenizer.from_folder(path)
    cache = "none"
    if quant is None:
        model = load_weights(path, cfg, device=choice.device, dtype=choice.dtype)
    else:
        model, hit = load_quantized(path, cfg, choice.device, choice.dtype, quant)
        cache = "hit" if hit else "written"
    return LoadedModel(path, InferenceModel(model), tokenizer, choice, hf, quant=quant, quant_cache=cache)
