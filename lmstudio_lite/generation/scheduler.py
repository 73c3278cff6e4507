"""The scheduler: the one driver of a loaded model, decoding many sequences together.

One driver thread owns the model and a pool of KV rows (``KVCache`` with R rows of the
model's whole context, sized from a memory budget). Each step it

1. drops sequences that were cancelled (their consumer called ``cancel``/``close``, dropped
   the stream, or their ``cancel`` event was set): the row is free before the next step;
2. admits waiting requests, oldest first, while fewer than ``max_batch`` run and a row is
   free or holds only a cached prefix (least recently used goes first);
3. prefills pending prompts in passes that hold several side by side (``Packed``: each from its
   own cached prefix into its own row, no padding, a chunk of ``prefill_chunk`` tokens each, one
   read of the weights per pass); passes go on before the decode step until a decoding stream has waited
   ``decode_gap_s`` for its next token (newcomers that can take a row are admitted between two
   passes), so a burst of newcomers gets first tokens soon while running streams keep flowing;
4. runs one decode step for every sequence past its prompt (``model.decode_rows``: through an
   ``InferenceModel``, the native kernel's multi-row step and head on the CPU, each weight read
   once for all rows; the ``Transformer``'s batched forward elsewhere) and samples each row with its
   own settings and seed.

Prompt cache: a finished sequence's row keeps the tokens whose K/V it holds. A new request
starts from the longest prefix any row holds (its own row when that row's whole content is
its prefix, as with the next turn of a chat; otherwise a copy of that prefix into a free
row), and only the rest is prefilled. K/V of a prefix depends on that prefix alone (causal
attention), so reuse is exact up to float rounding and no other tokens of that row are
ever read: nothing of another conversation can leak in. A request whose prompt shares a
longer prefix with one still being prefilled waits for it (``n`` > 1, a common system prompt
sent by several clients at once), so that prefix is computed once.

Consumers iterate a ``ScheduledStream`` (``stream.TextStream``'s surface, as ``GenerationStream``) in their
own thread, or watch it (``watch(notify)``, then ``take()``); the driver hands each sequence's
text deltas over through a queue, and calls the watchers' ``notify`` once per prefill pass and
once per step, just before the model runs again (the GIL is free then for whoever takes the text).
Sampling, stop strings and detokenizing happen per sequence in the driver, exactly as the single
stream engine does them.
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Iterator

import torch

from ..messages import Message
from ..model.kv_cache import KVCache, Packed
from ..threads import use_inference_threads
from .engine import check_request
from .sampling import SamplingParams, argmax_rows, sample, sample_tempered, tempered_only
from .stopping import StopStringHoldback
from .stream import RunState, TextStream

CPU_BATCH, GPU_BATCH = 8, 32  # default rows decoded together
PREFILL_CHUNK = 128  # prompt tokens prefilled per step (between two decode steps)
CLOSE_WAIT_S = 60.0  # close() waits at most this long for the driver (one step, normally)
IDLE_EXIT_S = 2.0  # an idle driver thread ends after this long
PASS_CHUNKS = 4  # with no stream decoding, one prefill pass may hold this many chunks of tokens
DECODE_GAP_S = 0.25  # while streams decode, prefill passes go on only until this long since their last step
TAIL_SHARE = 4  # a prompt's rest at most a quarter over the room left in a pass is prefilled whole
SHARE_MIN = 16  # a request waits for a prefix being prefilled only when it saves more tokens than this
CPU_BUDGET = 4 << 30  # default KV budget on the CPU, at most a quarter of the RAM; untouched rows cost nothing


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(Message("gen.err_env_int", name=name, got=repr(value))) from None
    if number < 1:
        raise ValueError(Message("gen.err_env_min", name=name, got=number))
    return number


def default_kv_dtype(model, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The KV pool's element type: the model's own ``dtype``, but float16 for a float32 (or quantized)
    model whose steps run in the native kernel, as llama.cpp keeps its cache. Half the bytes per token:
    twice the rows in a budget, and attention, which reads the whole prefix every step, 1.25x
    faster a step at position 1,000 (SmolLM2 Q4_1, one row; 1.46x for 8 rows)."""
    if dtype == torch.float32 and device.type == "cpu" and getattr(model, "native", None) is not None:
        return torch.float16
    return dtype


def default_budget(device: torch.device) -> int:
    """Bytes of KV the pool may hold: ``LMSTUDIO_LITE_KV_BUDGET_MB``, else a quarter of the RAM
    (at most 4 GiB) on the CPU, or half of the free memory on a GPU."""
    mb = _env_int("LMSTUDIO_LITE_KV_BUDGET_MB")
    if mb is not None:
        return mb << 20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 4 * CPU_BUDGET
    return min(CPU_BUDGET, ram // 4)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:  # the usual case (a chat's earlier turns): one C-level comparison
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _Row:
    """One KV row: ``tokens[:valid]`` are in it; ``seq`` is the sequence running there, if any."""

    __slots__ = ("index", "tokens", "valid", "seq", "used")

    def __init__(self, index: int):
        self.index, self.tokens, self.valid, self.seq, self.used = index, [], 0, None, 0.0


class _Seq(RunState):
    """A request's state; the driver alone changes it (the stream only reads it)."""

    def __init__(self, prompt_ids, params, max_new_tokens, stop, ignore_eos, cancel, logprobs, tokenizer):
        super().__init__(prompt_ids, params, max_new_tokens, cancel)
        self.holdback = StopStringHoldback(stop)
        self.eos = frozenset() if ignore_eos else frozenset(tokenizer.eos_ids)
        self.detok = tokenizer.decode_stream(skip_special_tokens=True)
        self.logprobs = logprobs  # None: off; k >= 0: the chosen token's logprob and the top k
        self.token_logprobs: list[dict] = []
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # (what, value, logprob entries covered)
        self.notify = None  # set by ScheduledStream.watch: called by the driver after new events
        self.placed = threading.Event()  # it has a row (or ended): no longer waiting
        self.tokens = list(prompt_ids)  # prompt, then every sampled id
        self.fed = 0  # tokens whose K/V is in the row
        self.row: _Row | None = None
        self.generator: torch.Generator | None = None
        self.t_submit = self.t_first = self.t_prefill = self.t_last = 0.0  # t_last: its last token
        self.submit_step = 0
        self.cancel_step: int | None = None
        self.stats["cached_tokens"] = 0


class Scheduler:
    """Serves every generation of one model, up to ``max_batch`` at once (see the module doc).

    model: an ``InferenceModel`` or a plain ``Transformer`` (model/inference.py); tokenizer: ``.eos_ids`` and
    ``.decode_stream``. ``max_batch`` (default ``LMSTUDIO_LITE_MAX_BATCH``, else 8 on the CPU
    and 32 on a GPU) may be changed at any time. ``kv_budget_bytes`` bounds the pool of KV
    rows (default ``default_budget``); ``cache_rows`` extra rows (default ``max_batch``) keep
    finished sequences for the prompt cache, 0 turns the cache off. The driver thread ends after
    ``idle_exit_s`` without work (so nothing keeps an unloaded model alive) and restarts on demand.
    """

    def __init__(self, model, tokenizer, device: torch.device | str | None = None, max_batch: int | None = None,
                 kv_budget_bytes: int | None = None, cache_rows: int | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, idle_exit_s: float = IDLE_EXIT_S,
                 decode_gap_s: float = DECODE_GAP_S, kv_dtype: torch.dtype | None = None):
        self.model, self.tokenizer = model, tokenizer
        param = next(model.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            param.device if param is not None else torch.device("cpu"))
        self.dtype = kv_dtype or default_kv_dtype(model, param.dtype if param is not None else torch.float32,
                                                  self.device)  # the KV pool's
        default_batch = GPU_BATCH if self.device.type == "cuda" else CPU_BATCH
        self.max_batch = max_batch or _env_int("LMSTUDIO_LITE_MAX_BATCH") or default_batch
        self.cache_rows = self.max_batch if cache_rows is None else cache_rows
        self.kv_budget_bytes = kv_budget_bytes if kv_budget_bytes is not None else default_budget(self.device)
        self.prefill_chunk, self.idle_exit_s, self.decode_gap_s = prefill_chunk, idle_exit_s, decode_gap_s
        self.steps = 0  # driver steps so far (a step: admissions, one prefill chunk, one decode step)
        self._cond = threading.Condition()
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []
        self._rows: list[_Row] = []
        self._pool: KVCache | None = None
        self._driver = _Driver(self._cond)
        weakref.finalize(self, _stop_driver, self._driver)
        _DRIVERS.add(self._driver)  # stopped at interpreter exit (_stop_all_drivers)
        self._pool_error: str | None = None
        self._touched: dict[int, object] = {}  # id(seq) -> its notify: sequences with new events (driver only)

    # -- the public surface ---------------------------------------------------------------
    def stream(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int,
               stop: Iterable[str] = (), ignore_eos: bool = False, cancel: threading.Event | None = None,
               logprobs: int | None = None) -> "ScheduledStream":
        """Check the request now (ValueError / ContextOverflowError); it joins the scheduler on the
        stream's first ``next()``. ``logprobs`` (None, or k >= 0) records each token's logprob and
        the top k alternatives in ``stream.logprobs``."""
        prompt_ids, max_new_tokens = check_request(self.model.config, prompt_ids, params, max_new_tokens)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= 20):
            raise ValueError(Message("gen.err_logprobs", got=repr(logprobs)))
        seq = _Seq(prompt_ids, params, max_new_tokens, stop, ignore_eos, cancel, logprobs, self.tokenizer)
        return ScheduledStream(self, seq)

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int,
                     ignore_eos: bool = False) -> list[int]:
        stream = self.stream(prompt_ids, params, max_new_tokens, ignore_eos=ignore_eos)
        for _ in stream:
            pass
        return list(stream.new_ids)

    def info(self) -> dict:
        """The pool and its use: budget, rows, what runs, waits and is cached (for status lines and /v1/models)."""
        with self._cond:
            per_row = self._row_bytes()
            rows = len(self._rows) or self._planned_rows()  # planned until the first request makes the pool
            cached = [r for r in self._rows if r.seq is None and r.valid]
            return {"max_batch": self.max_batch, "kv_budget_bytes": self.kv_budget_bytes,
                    "kv_dtype": str(self.dtype).removeprefix("torch."),
                    "kv_rows": rows, "kv_row_tokens": self.model.config.max_seq_len, "kv_bytes": per_row * rows,
                    "kv_used_bytes": sum(r.valid for r in self._rows) * per_row // self.model.config.max_seq_len,
                    "running": len(self._running), "waiting": len(self._waiting),
                    "cached_prefixes": len(cached), "cached_tokens": sum(r.valid for r in cached),
                    "steps": self.steps, "pool_error": self._pool_error}

    def queue_position(self, seq: _Seq) -> int | None:
        """1 for the next request to start; None once it runs (or before it was submitted)."""
        with self._cond:
            try:
                return self._waiting.index(seq) + 1
            except ValueError:
                return None

    def _cancel(self, seq: _Seq):
        """Mark ``seq`` cancelled and wake the driver: it ends at the next step (or the prefill pass
        running now)."""
        with self._cond:
            if seq.cancel_step is None:
                seq.cancel_step = self.steps
            seq.cancel_event.set()
            self._cond.notify_all()

    def clear_cache(self):
        """Forget every cached prefix (rows of running sequences stay)."""
        with self._cond:
            for row in self._rows:
                if row.seq is None:
                    row.tokens, row.valid = [], 0

    # -- submission ----------------------------------------------------------------------
    def _submit(self, seq: _Seq):
        seq.t_submit = time.perf_counter()
        with self._cond:
            seq.submit_step = self.steps
            self._waiting.append(seq)
            driver = self._driver
            if not driver.stopping and (driver.thread is None or not driver.thread.is_alive()):
                driver.thread = threading.Thread(target=self._drive, name="lmstudio-scheduler", daemon=True)
                _THREADS.add(driver.thread)
                driver.thread.start()
            self._cond.notify_all()

    # -- the driver --------------------------------------------------------------------------
    def _drive(self):
        while True:
            with self._cond:
                while self._driver.stopping or (not self._waiting and not self._running):
                    # Idle for a while: end, so an unloaded model (and its KV pool) is not kept
                    # alive by this thread; the next request starts a new one.
                    if self._driver.stopping or (not self._cond.wait(self.idle_exit_s) and not self._waiting
                                                 and not self._running):
                        self._driver.thread = None
                        return
            use_inference_threads(self.device)  # this thread only: a job may hold the rest
            try:
                self._step()
            except BaseException as e:  # a bug in the driver itself: fail what it holds, keep serving
                with self._cond:  # waiting ones too: a step that fails on them would fail again forever
                    held = self._running + self._waiting
                for seq in held:
                    self._fail(seq, e)
            self._notify_watchers()

    def _notify_watchers(self):
        """Tell each watcher whose sequence got events since the last call: once per step (or prefill
        pass) rather than per event, so an event loop serving many streams wakes once for all."""
        touched, self._touched = self._touched, {}
        for notify in touched.values():
            notify()

    def _step(self):
        with self._cond:
            cancelled = [s for s in self._waiting + self._running if s.cancelled()]
        for seq in cancelled:
            self._finish(seq, "cancelled")
        self._admit()
        with torch.inference_mode():
            while self._prefill():  # newcomers can join and no decode step is due yet: they join now
                self._admit()
            self._decode()
        with self._cond:  # counted under the lock that ``cancel`` reads it with
            self.steps += 1

    def _row_bytes(self) -> int:
        cfg = self.model.config
        return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * cfg.max_seq_len * self.dtype.itemsize

    def _planned_rows(self) -> int:
        return max(1, min(self.max_batch + self.cache_rows, self.kv_budget_bytes // self._row_bytes()))

    def _ensure_pool(self):
        if self._pool is not None:
            return
        want = self._planned_rows()
        while True:
            try:  # untouched memory: a row costs what its sequences write
                self._pool = KVCache(self.model.config, want, self.model.config.max_seq_len, self.device,
                                     self.dtype, zeroed=False)
                break
            except (RuntimeError, MemoryError) as e:  # out of memory: fewer rows, never a crash
                if want == 1:
                    self._pool_error = f"no memory for one KV row: {e}"
                    raise MemoryError(self._pool_error) from e
                want //= 2
        with self._cond:
            self._rows = [_Row(i) for i in range(want)]

    def _admit(self):
        with self._cond:
            if not self._waiting:
                return
        try:
            self._ensure_pool()
        except MemoryError as e:
            with self._cond:
                waiting, self._waiting = self._waiting, []
            for seq in waiting:
                self._fail(seq, e)
            return
        with self._cond:
            for seq in list(self._waiting):
                if len(self._running) >= self.max_batch:
                    break
                if self._place(seq):
                    self._waiting.remove(seq)
                    self._running.append(seq)

    def _place(self, seq: _Seq) -> bool:
        """Give ``seq`` a row holding the longest prefix available; False: it waits."""
        prompt, limit = seq.prompt_ids, len(seq.prompt_ids) - 1  # the last prompt token is always fed
        best, match = None, 0
        for row in self._rows:
            m = _common_prefix(prompt, row.tokens, min(limit, row.valid)) if row.valid else 0
            if m > match:
                best, match = row, m
        for other in self._running:  # its prompt is being prefilled: wait rather than compute it twice
            if other.fed < len(other.prompt_ids) and \
                    _common_prefix(prompt, other.prompt_ids, limit) > match + SHARE_MIN:
                return False
        if best is not None and best.seq is None and match == best.valid:
            row = best  # its whole content is our prefix (the next turn of a chat): take it over
        else:
            free = [r for r in self._rows if r.seq is None and r is not best]
            if not free:
                if best is None or best.seq is not None:
                    return False
                row = best  # the only row left holds part of our prefix: keep that part
            else:
                row = min(free, key=lambda r: (r.valid > 0, r.used))  # empty first, then least recently used
                if best is not None and match:
                    self._pool.k[:, row.index, :, :match].copy_(self._pool.k[:, best.index, :, :match])
                    self._pool.v[:, row.index, :, :match].copy_(self._pool.v[:, best.index, :, :match])
                else:
                    match = 0
        row.seq, row.tokens, row.valid, row.used = seq, seq.tokens, match, time.monotonic()
        seq.row, seq.fed = row, match
        seq.stats["cached_tokens"] = match
        seq.placed.set()
        seq.generator = torch.Generator(device=self.device)
        seq.generator.manual_seed(seq.seed)
        return True

    def _prefill(self) -> bool:
        """Prefill pending prompts, several in one pass (``_prefill_group``): a pass holds up to
        ``prefill_chunk`` tokens per pending prompt, at most ``PASS_CHUNKS`` chunks, side by side
        (``Packed``: every matrix runs once for all of them, with no padding). Passes go on,
        before the decode step, while no decoding stream has waited ``decode_gap_s`` for its next
        token and nothing can join or waits to cancel: newcomers get their first token sooner,
        running streams still step at least that often.
        -> True when it stopped only because a newcomer can join (admit it and call again: a decode
        step now would delay the burst's prompts by a step that no stream is due for yet)."""
        pending = [s for s in self._running if s.fed < len(s.prompt_ids)]
        while pending:
            decoding = [s.t_last for s in self._running if s.fed >= len(s.prompt_ids)]
            chunks = min(PASS_CHUNKS, len(pending)) if decoding else PASS_CHUNKS
            self._prefill_pass(*self._prefill_group(pending, self.prefill_chunk * chunks))
            self._notify_watchers()  # first tokens go out now, not after the burst's other passes
            pending = [s for s in self._running if s.fed < len(s.prompt_ids)]
            decoding = [s.t_last for s in self._running if s.fed >= len(s.prompt_ids)]
            if (decoding and time.perf_counter() - min(decoding) >= self.decode_gap_s) or self._cancel_pending():
                return False
            if self._waiting and len(self._running) < self.max_batch:  # a newcomer could take a row
                return True
        return False

    def _cancel_pending(self) -> bool:
        """A sequence (running or waiting) was cancelled since this step began: the step ends so that
        its ``close()`` returns within one step, not after the whole burst of prefill passes."""
        with self._cond:
            return any(s.cancelled() for s in self._running) or any(s.cancelled() for s in self._waiting)

    @staticmethod
    def _prefill_group(pending: list[_Seq], budget: int) -> tuple[list[_Seq], list[int]]:
        """The pending sequences that one pass of at most ``budget`` tokens takes, oldest first, and
        how many tokens of each: its whole rest of prompt, or what room is left (it goes on in the
        next pass). A rest at most a quarter over the room goes whole: a pass of its last few
        tokens would cost about as much as a full one (a pass's fixed cost: the bundled model's
        2-token pass 1.5-4 ms)."""
        group, lens, room = [], [], budget
        for seq in pending:
            rest = len(seq.prompt_ids) - seq.fed
            take = rest if rest <= room + room // TAIL_SHARE else room
            group.append(seq)
            lens.append(take)
            room -= take
            if room <= 0:
                break
        return group, lens

    def _prefill_pass(self, group: list[_Seq], lens: list[int]):
        """Feed the next ``lens[i]`` prompt tokens of each sequence in ``group`` in one pass, each
        from its own position into its own cache row (``Packed``); a sequence whose prompt is then
        complete gets its first token."""
        starts = [s.fed for s in group]
        t0 = time.perf_counter()
        try:
            ids = [t for s, at, n in zip(group, starts, lens) for t in s.prompt_ids[at:at + n]]
            packed = Packed([s.row.index for s in group], starts, lens, self.device)
            hidden = self.model.forward_hidden(torch.tensor([ids], dtype=torch.long, device=self.device),
                                               start_pos=packed, cache=self._pool)[0]  # [N, C]
            done = [b for b, s in enumerate(group) if starts[b] + lens[b] == len(s.prompt_ids)]
            last = [packed.offsets[b] + lens[b] - 1 for b in done]
            logits = self.model.project(hidden[last]) if done else None  # [len(done), V]
        except Exception as e:
            for seq in group:
                self._fail(seq, e)
            return
        spent = time.perf_counter() - t0
        for b, seq in enumerate(group):
            seq.t_prefill += spent
            seq.fed = starts[b] + lens[b]
            seq.row.valid = seq.fed
        for i, b in enumerate(done):
            self._accept(group[b], logits, i)

    def _decode(self):
        batch = [s for s in self._running if s.fed == len(s.tokens) - 1 and s.fed >= len(s.prompt_ids)]
        if not batch:
            return
        dev = self.device
        tokens = torch.tensor([s.tokens[-1] for s in batch], dtype=torch.long, device=dev)
        positions = torch.tensor([s.fed for s in batch], dtype=torch.long, device=dev)
        slots = torch.tensor([s.row.index for s in batch], dtype=torch.long, device=dev)
        try:
            logits = self.model.decode_rows(tokens, positions, slots, self._pool)  # [B, V]
        except Exception as e:
            for seq in batch:
                self._fail(seq, e)
            return
        picks = self._pick_together(batch, logits)
        now = time.perf_counter()
        for b, seq in enumerate(batch):
            seq.fed += 1
            seq.row.valid = seq.fed
            self._accept(seq, logits, b, picks[b], now)

    def _pick_together(self, batch: list[_Seq], logits: torch.Tensor) -> list[int | None]:
        """The next id of every row that can be picked with the others (None for the rest, sampled one
        by one): greedy rows without a penalty by one argmax, and on the CPU rows sampled at a
        temperature alone (an OpenAI client's default) by one softmax and cumsum, each row still
        drawing from its own seeded generator. Per row, these cost more than the batched step."""
        picks: list[int | None] = [None] * len(batch)
        greedy = [b for b, s in enumerate(batch) if s.params.greedy and s.params.repetition_penalty == 1.0]
        if greedy:
            ids = argmax_rows(logits).tolist()
            for b in greedy:
                picks[b] = ids[b]
        if logits.device.type == "cpu":
            tempered = [b for b, s in enumerate(batch) if tempered_only(s.params)]
            if tempered:
                rows = logits if len(tempered) == len(batch) else logits[tempered]
                ids = sample_tempered(rows, [batch[b].params.temperature for b in tempered],
                                      [batch[b].generator for b in tempered]).tolist()
                for b, tok in zip(tempered, ids):
                    picks[b] = tok
        return picks

    def _accept(self, seq: _Seq, logits: torch.Tensor, b: int = 0, tok: int | None = None,
                now: float | None = None):
        """Sample the next id from row ``b`` of logits [B, V] (unless ``tok`` was already picked),
        stream its text, and end the sequence when it is done."""
        params = seq.params
        if tok is None:
            prev = None
            if params.repetition_penalty != 1.0:
                prev = torch.tensor([seq.tokens], dtype=torch.long, device=logits.device)
            tok = int(sample(logits[b:b + 1], params, seq.generator, prev).item())
        entry = None
        if seq.logprobs is not None and tok not in seq.eos:  # OpenAI lists no entry for the end token
            entry = _logprob_entry(logits[b:b + 1], tok, seq.logprobs)
        now = seq.t_last = now or time.perf_counter()
        seq.tokens.append(tok)
        new_ids = seq.new_ids
        new_ids.append(tok)
        n, stats = len(new_ids), seq.stats
        if seq.t_first == 0.0:
            seq.t_first = now
            stats["ttft_s"] = now - seq.t_submit
            stats["prefill_ms"] = seq.t_prefill * 1000.0
            stats["ttft_steps"] = self.steps - seq.submit_step  # driver steps it waited (0: its first one)
        stats["new_tokens"] = n
        if n >= 2:
            stats["decode_tok_s"] = (n - 1) / max(now - seq.t_first, 1e-9)
        if tok in seq.eos:
            self._finish(seq, "stop")
            return
        piece = seq.detok.step(tok) or ""
        if entry is not None:
            entry["text"] = piece  # its share of the text: the entries' texts add up to the reply
            seq.token_logprobs.append(entry)
        emit, hit = seq.holdback.feed(piece)
        if emit:
            self._emit(seq, emit)
        if hit:
            self._finish(seq, "stop")
        elif len(seq.new_ids) >= seq.max_new_tokens:
            self._finish(seq, "length")

    def _emit(self, seq: _Seq, text: str):
        seq.text += text
        seq.events.put(("delta", text, len(seq.token_logprobs) if seq.logprobs is not None else None))
        if seq.notify is not None:
            self._touched[id(seq)] = seq.notify

    def _finish(self, seq: _Seq, reason: str):
        """End ``seq`` normally ("stop", "length", "cancelled"): its text held back is released, its row
        keeps its tokens for the prompt cache."""
        if reason == "length":  # bytes of a character cut off by the limit still reach the user (U+FFFD)
            emit, _ = seq.holdback.feed(seq.detok.flush() or "")
            if emit:
                self._emit(seq, emit)
        tail = seq.holdback.flush()  # text held back for a stop string that never came
        if tail:
            self._emit(seq, tail)
        if reason == "cancelled" and seq.cancel_step is not None:
            seq.stats["cancel_steps"] = self.steps - seq.cancel_step  # steps that ran after cancel() (0 or 1)
        self._end(seq, reason, ("end", None, None))

    def _fail(self, seq: _Seq, error: BaseException):
        """End ``seq`` with ``error`` (raised to its consumer); its row's contents are forgotten."""
        self._end(seq, "error", ("error", error, None))

    def _end(self, seq: _Seq, reason: str, last_event: tuple):
        """Take ``seq`` out of the queue and the batch, free its row, complete its stats, wake its
        consumer and whoever waits for its end."""
        with self._cond:
            if seq in self._waiting:
                self._waiting.remove(seq)
        self._release(seq, keep=reason != "error")
        stats = seq.stats
        stats["finish_reason"] = reason
        stats["context_full"] = len(seq.tokens) >= self.model.config.max_seq_len
        stats["total_s"] = time.perf_counter() - seq.t_submit if seq.t_submit else 0.0
        seq.events.put(last_event)
        if seq.notify is not None:
            self._touched[id(seq)] = seq.notify
        seq.placed.set()
        seq.ended.set()

    def _release(self, seq: _Seq, keep: bool):
        with self._cond:
            if seq in self._running:
                self._running.remove(seq)
            row = seq.row
            if row is not None:
                row.seq, row.used = None, time.monotonic()
                if keep and self.cache_rows > 0:
                    row.tokens = row.tokens[:row.valid]  # its own copy: the sequence's list stays the stream's
                else:
                    row.tokens, row.valid = [], 0  # contents unknown after an error, or no cache wanted
                seq.row = None


class _Driver:
    """The driver thread and what stops it, kept apart from the scheduler so that stopping it at
    interpreter exit needs no reference to the scheduler."""

    __slots__ = ("cond", "thread", "stopping", "__weakref__")

    def __init__(self, cond: threading.Condition):
        self.cond, self.thread, self.stopping = cond, None, False


def _stop_driver(driver: _Driver):
    """The scheduler is gone, or the interpreter exits: end the driver after its step. A driver
    thread still alive when the interpreter tears torch down aborts the process ("terminate
    called without an active exception": `lmstudio-lite generate` exited -6 right after printing)."""
    with driver.cond:
        driver.stopping = True
        driver.cond.notify_all()
        thread = driver.thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(IDLE_EXIT_S)


_DRIVERS: "weakref.WeakSet[_Driver]" = weakref.WeakSet()
_THREADS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


@atexit.register
def _stop_all_drivers():
    """Every driver stopped, and every driver thread waited for, before the interpreter tears
    down. A thread that has left its loop still frees what it held (its scheduler, the KV pool)
    as it ends, and torch releases the GIL to free a tensor: taking it back during teardown ends
    the thread through torch's C++ frames, and the process aborts ("terminate called without an
    active exception"; a 5-file pytest run exited 134 in 4 runs of 5)."""
    for driver in list(_DRIVERS):
        _stop_driver(driver)
    for thread in list(_THREADS):
        if thread is not threading.current_thread():
            thread.join(IDLE_EXIT_S)


def _logprob_entry(logits: torch.Tensor, tok: int, top: int) -> dict:
    """OpenAI's meaning: log-softmax of the model's raw logits (temperature 1, before the
    repetition penalty and every filter), whatever the request's sampling settings."""
    lp = torch.log_softmax(logits[0].float(), dim=-1)
    entry = {"id": tok, "logprob": float(lp[tok]), "top": []}
    if top:
        values, ids = lp.topk(top)
        entry["top"] = [(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist())]
    return entry


class ScheduledStream(TextStream):
    """The scheduler's stream (``TextStream``'s surface): its driver generates, this hands the deltas over.

    ``.stats`` adds cached_tokens (prompt tokens whose K/V came from the prompt cache), ttft_steps
    (driver steps between joining and the first token) and cancel_steps (after ``cancel()``: driver
    steps that completed before its row was freed); ttft_s counts from the first ``next()``, waiting
    for a row included. ``.logprobs`` (with ``logprobs=k``: per sampled token
    ``{"id", "text", "logprob", "top": [(id, lp)]}``, ``text`` its share of the reply: empty for the
    first bytes of a character split over tokens); ``.queue_position`` (1.. while waiting for a row,
    else None).

    The request joins on the first ``next()``; ``cancel()`` (any thread) ends it within one
    step; ``close()`` ends it and returns once its row is free; dropping the stream cancels it.
    """

    def __init__(self, scheduler: Scheduler, seq: _Seq):
        super().__init__(seq)
        self._scheduler, self.logprobs = scheduler, seq.token_logprobs
        self._submitted = self._done = False
        weakref.finalize(self, _drop, scheduler, seq)

    def _join(self) -> bool:
        """Submit the request once; False when it was cancelled before it joined."""
        if not self._submitted:
            self._submitted = True  # before the cancel check: close() then waits for what it sees submitted
            if self._run.cancelled():
                self._done = True
                self.stats["finish_reason"] = "cancelled"
                self._run.ended.set()
                return False
            self._scheduler._submit(self._run)
        return not self._done

    def waiting(self, poll_s: float = 0.5) -> Iterator[int]:
        """Join now and yield the queue position (1 = next) every ``poll_s`` seconds while the request
        waits for a row; returns as soon as it runs or ends (for a UI to say where it stands)."""
        if not self._join():
            return
        while not self._run.placed.is_set():
            position = self.queue_position
            if position is not None:
                yield position
            self._run.placed.wait(poll_s)

    def __next__(self) -> str:
        if self._done or not self._join():
            raise StopIteration
        what, value, _ = self._run.events.get()
        if what == "delta":
            return value
        self._done = True
        if what == "error":
            raise value
        raise StopIteration

    def watch(self, notify):
        """``TextStream.watch`` without a thread: the driver calls ``notify`` after each step (or
        prefill pass) that gave this stream new events; ``take()`` reads them."""
        self._inbox, self._run.notify = self._run.events, notify
        if not self._join():  # cancelled before it joined: it ends with nothing
            self._run.events.put(("end", None, None))
            notify()

    @property
    def queue_position(self) -> int | None:
        return self._scheduler.queue_position(self._run)

    def cancel(self):
        """Ask the generation to stop (safe from any thread); its row is free within one step."""
        self._scheduler._cancel(self._run)

    def _let_go(self):
        if self._submitted:
            self._run.ended.wait(CLOSE_WAIT_S)
        else:
            self._run.ended.set()  # it never joined: there is nothing to let go of
        self._done = True


def _drop(scheduler: Scheduler, seq: _Seq):
    """A stream dropped unfinished: cancel its sequence (holds no reference to the stream)."""
    if not seq.ended.is_set():
        scheduler._cancel(seq)
