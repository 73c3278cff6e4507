"""The streaming decode loop: prefill, KV cache, sampling, stop conditions, timings.

The engine owns one preallocated KV cache and a lock: it serves one generation at a
time and callers queue. Generation runs lazily in the consumer's thread while it
iterates a ``GenerationStream``; there are no background threads.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import torch

from ..errors import LiteError
from ..messages import Message
from ..model.kv_cache import KVCache
from ..threads import release_thread_team, use_inference_threads
from .sampling import SamplingParams, sample
from .stopping import StopStringHoldback
from .stream import RunState, TextStream

FINISH_REASONS = ("stop", "length", "cancelled")  # plus "error" when the model raised
MIN_CACHE_LEN = 256  # the cache grows in powers of two from here, so it is reallocated only a few times


class ContextOverflowError(LiteError, ValueError):
    """The prompt leaves no room for a new token in the model's context window."""

    def __init__(self, prompt_tokens: int, limit: int):
        self.prompt_tokens, self.limit = prompt_tokens, limit
        super().__init__(Message("gen.err_context_overflow", n=prompt_tokens, limit=limit, most=limit - 1))


def check_request(config, prompt_ids, params: SamplingParams, max_new_tokens: int) -> tuple[list[int], int]:
    """-> (prompt ids as ints, max_new_tokens capped to what the context leaves); raises ValueError
    or ContextOverflowError for a request no model could serve (shared by Engine and Scheduler)."""
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise ValueError(Message("gen.err_empty_prompt"))
    if len(prompt_ids) >= config.max_seq_len:
        raise ContextOverflowError(len(prompt_ids), config.max_seq_len)
    bad = [i for i in prompt_ids if not 0 <= i < config.vocab_size]
    if bad:
        raise ValueError(Message("gen.err_token_id", id=bad[0], last=config.vocab_size - 1))
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(Message("gen.err_max_new_tokens", got=repr(max_new_tokens)))
    if not isinstance(params, SamplingParams):
        raise ValueError(Message("gen.err_params_type", got=type(params).__name__))
    max_new_tokens = min(max_new_tokens, config.max_seq_len - len(prompt_ids))
    return prompt_ids, max_new_tokens


class Engine:
    """Generates text from a model and a tokenizer, one request at a time.

    model: ``model(ids [B, T], start_pos, cache, last_only) -> logits [B, T or 1, V]`` with a
    ``.config: ModelConfig``. tokenizer: ``.eos_ids: list[int]`` and
    ``.decode_stream(skip_special_tokens=True)`` whose ``.step(id) -> str | None`` never splits
    a UTF-8 character. ``device`` defaults to where the model's parameters live.
    """

    def __init__(self, model, tokenizer, device: torch.device | str | None = None):
        self.model, self.tokenizer = model, tokenizer
        # Resolved ("cuda" -> "cuda:0") so the cache's device check matches the tensors it holds.
        self._device = torch.empty(0, device=device).device if device is not None else None
        self._lock = threading.Lock()
        self._cache: KVCache | None = None

    @property
    def device(self) -> torch.device:
        if self._device is not None:
            return self._device
        param = next(self.model.parameters(), None) if hasattr(self.model, "parameters") else None
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The KV cache's dtype: that of the model's parameters."""
        param = next(self.model.parameters(), None) if hasattr(self.model, "parameters") else None
        return param.dtype if param is not None else torch.float32

    def stream(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int,
               stop: Iterable[str] = (), ignore_eos: bool = False,
               cancel: threading.Event | None = None) -> GenerationStream:
        """Check the request now (raises ValueError / ContextOverflowError); generate lazily on iteration.

        ``max_new_tokens`` is capped to what is left of the context window after the prompt.
        """
        prompt_ids, max_new_tokens = check_request(self.model.config, prompt_ids, params, max_new_tokens)
        return GenerationStream(self, prompt_ids, params, max_new_tokens, StopStringHoldback(stop),
                                ignore_eos, cancel)

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int,
                     ignore_eos: bool = False) -> list[int]:
        """Run a whole generation and return the new ids (an EOS that ended it included)."""
        stream = self.stream(prompt_ids, params, max_new_tokens, ignore_eos=ignore_eos)
        for _ in stream:
            pass
        return list(stream.new_ids)

    def clear_cache(self):
        """Free the KV cache (the next generation allocates a new one)."""
        with self._lock:
            self._cache = None

    def _cache_for(self, length: int) -> KVCache:
        """The engine's cache, reallocated only when it is too small or on the wrong device/dtype."""
        config, device, dtype = self.model.config, self.device, self.dtype
        if self._cache is None or not self._cache.fits(config, 1, length, device, dtype):
            size = MIN_CACHE_LEN
            while size < length:
                size *= 2
            self._cache = None  # let the old one go before the new one is allocated
            self._cache = KVCache(config, 1, min(max(size, length), config.max_seq_len), device, dtype)
        return self._cache


class GenerationStream(TextStream):
    """The engine's stream (``TextStream``'s surface): generation happens as it is iterated.

    ``stats["ttft_s"]`` counts from the first ``next()``, waiting for the engine included;
    ``prefill_ms`` is the prompt's forward pass and the first sample.

    The engine is held from the first ``next()`` until the stream ends. A consumer that stops
    early releases it by calling ``.close()``, leaving a ``with`` block, or dropping the stream
    (the generator holds no reference back to this object, so that frees it at once). ``close()``
    from another thread waits for the consumer's current ``next()`` (one token once cancelled).
    """

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams,
                 max_new_tokens: int, holdback: StopStringHoldback, ignore_eos: bool,
                 cancel: threading.Event | None):
        super().__init__(_Generation(engine, prompt_ids, params, max_new_tokens, holdback, ignore_eos, cancel))
        self._gen = self._run.locked()
        self._step = threading.Lock()  # held through each next(): a generator runs in one thread at a time

    def __next__(self) -> str:
        with self._step:
            return next(self._gen)

    def _let_go(self):
        with self._step:
            self._gen.close()
        self._run.ended.set()  # closing a generator that never started runs none of its code


class _Generation(RunState):
    """The state and decode loop behind one GenerationStream (kept apart so that the running
    generator does not keep the stream object alive)."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams,
                 max_new_tokens: int, holdback: StopStringHoldback, ignore_eos: bool,
                 cancel: threading.Event | None):
        super().__init__(prompt_ids, params, max_new_tokens, cancel)
        self._engine, self._holdback, self._ignore_eos = engine, holdback, ignore_eos

    def locked(self) -> Iterator[str]:
        t_start = time.perf_counter()
        try:
            with self._engine._lock:  # a second stream waits here until the first one ends
                yield from self._decode_loop(t_start)
        finally:
            self.ended.set()

    def _decode_loop(self, t_start: float) -> Iterator[str]:
        engine, stats, holdback = self._engine, self.stats, self._holdback
        eos = frozenset() if self._ignore_eos else frozenset(engine.tokenizer.eos_ids)
        detok = engine.tokenizer.decode_stream(skip_special_tokens=True)
        reason, t_first = None, None
        try:
            # Setup: the cache (reused when it fits), the seeded generator, the repetition history.
            state = self._setup(len(self.prompt_ids) + self.max_new_tokens)
            logits = None
            while reason is None:
                # Cancel is checked before every token, so Stop lands within one token.
                if self.cancelled():
                    reason = "cancelled"
                    break
                # Prefill the prompt (first pass) or decode the last id at its position; sample.
                t0 = time.perf_counter()
                logits = self._forward(state, logits)
                tok = self._pick(state, logits)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                    stats["prefill_ms"] = (now - t0) * 1000.0
                    stats["ttft_s"] = now - t_start
                self.new_ids.append(tok)
                stats["new_tokens"] = len(self.new_ids)
                if len(self.new_ids) >= 2:
                    stats["decode_tok_s"] = (len(self.new_ids) - 1) / max(now - t_first, 1e-9)
                # Stop conditions: EOS (never shown), a stop string (held back, never shown), the limit.
                if tok in eos:
                    reason = "stop"
                    break
                emit, hit = holdback.feed(detok.step(tok) or "")
                if hit:
                    reason = "stop"
                elif len(self.new_ids) >= self.max_new_tokens:
                    reason = "length"  # also the case when the context window is full
                # Emit: the consumer runs while we are suspended here (still holding the engine).
                if emit:
                    self.text += emit
                    yield emit
            # Bytes of a character cut off by the limit still reach the user (as U+FFFD).
            if reason == "length":
                emit, _ = holdback.feed(detok.flush() or "")
                if emit:
                    self.text += emit
                    yield emit
            # Release text held back for a stop string that never came.
            tail = holdback.flush()
            if tail:
                self.text += tail
                yield tail
        except GeneratorExit:
            reason = reason or "cancelled"  # the consumer stopped iterating (break, close, garbage collection)
            raise
        except BaseException:
            reason = reason or "error"
            raise
        finally:
            stats["finish_reason"] = reason
            # "length" either way (as OpenAI reports it); this tells the user which limit ended the reply.
            stats["context_full"] = len(self.prompt_ids) + len(self.new_ids) >= engine.model.config.max_seq_len
            stats["total_s"] = time.perf_counter() - t_start
            release_thread_team()  # the next request may come in another thread (threads.py)

    def _setup(self, length: int) -> dict:
        # Plain (not inference-mode) tensors: they stay writable whatever mode later code runs in.
        engine = self._engine
        device = engine.device
        use_inference_threads(device)  # this thread only: a job may hold the rest
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        history = None
        if self.params.repetition_penalty != 1.0:
            # Prompt + output ids on the device, preallocated so the penalty never rebuilds a tensor.
            history = torch.empty((1, length), dtype=torch.long, device=device)
            history[0, :len(self.prompt_ids)] = torch.tensor(self.prompt_ids, dtype=torch.long)
        return {"cache": engine._cache_for(length), "generator": generator, "history": history,
                "device": device, "last": None}

    @torch.inference_mode()
    def _forward(self, state: dict, logits: torch.Tensor | None) -> torch.Tensor:
        """-> logits [1, V] for the next token. First call: the whole prompt at 0; then the last
        sampled id at its position. Inference mode is entered per call, never across a ``yield``,
        so the consumer's own code never runs inside it.
        """
        model, cache = self._engine.model, state["cache"]
        if logits is None:
            ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=state["device"])  # [1, T]
            out = model(ids, start_pos=0, cache=cache, last_only=True)
        else:
            pos = len(self.prompt_ids) + len(self.new_ids) - 1  # where the last sampled id goes
            out = model(state["last"].view(1, 1), start_pos=pos, cache=cache, last_only=True)
        return out[:, -1]  # [1, V]

    @torch.inference_mode()
    def _pick(self, state: dict, logits: torch.Tensor) -> int:
        """Sample the next id from logits [1, V], record it for the next step; -> the id."""
        history = state["history"]
        n_seen = len(self.prompt_ids) + len(self.new_ids)
        prev = history[:, :n_seen] if history is not None else None  # [1, n_seen]
        nxt = sample(logits, self.params, state["generator"], prev)  # [1]
        if history is not None and n_seen < history.shape[1]:
            history[:, n_seen] = nxt
        state["last"] = nxt
        return int(nxt.item())  # the one host sync per token: the text has to be streamed
