"""What the cores allow bench/serve.py's 8-client load: the work it cannot skip, timed, against
what one client gets. Issue 14's targets, checked against their floors rather than against a run.

    python bench/serve_bounds.py                   # the bundled model and SmolLM2-135M (GGUF)
    python bench/serve_bounds.py --model PATH ...  # any model folders or GGUF files

In this process, on ``--threads`` threads, for each model:

1. One client through our Scheduler (as ``serve.py --engine``: no HTTP): its tok/s and its p95 time
   to first token (serve.py's p95 of one round: the slowest of the round's three requests, the
   longest prompt's), medians of ``--repeat`` rounds.
2. The 8-client round's prefill, the least it can be: the eight prompts' tokens past the prefix they
   all share (the chat template's; a warm prompt cache holds it) in one packed pass (``Packed``, the
   scheduler's own; one read of every weight for all of them), with the eight first tokens' logits.
   The round's last first token cannot come sooner: each of the eight needs its whole prompt in the
   cache first. Its p95 time to first token (the round's slowest) is at least this.
3. One decode step of 1 and of 8 rows (``decode_rows``, the scheduler's step, each row just past its
   prompt).

From these: the p95 ratio is at least pass / one client's p95 (target <= 3x). The 8 clients' wall
time is at least the pass plus ``tokens - 1`` decode steps of 8 rows (every request needs them, one
after another): their tok/s at most 8 x tokens / that, as a ratio to one client's (target >= 3x);
the same if an 8-row step cost no more than a 1-row one (it reads the same weights: the floor of any
kernel); and the 8-row step that 3x needs. One client's round, the passes and the steps alternate
round by round, and each ratio is the median of the rounds' own ratios: drift on these shared
machines hits both sides of a ratio alike.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import torch

from serve import BUNDLED, SMOLLM2, _load, engine_request, prompt_of  # bench/, beside this file
from timing import machine

LENGTHS = (8, 40, 90)  # serve.py's prompt mix (words)


def bounds(path: str, args) -> list[str]:
    from lmstudio_lite import load_model
    from lmstudio_lite.generation import Scheduler
    from lmstudio_lite.generation.scheduler import IDLE_EXIT_S, _common_prefix
    from lmstudio_lite.memory import keep_freed_memory
    from lmstudio_lite.model import KVCache
    from lmstudio_lite.model.kv_cache import Packed
    from lmstudio_lite.threads import release_thread_team

    keep_freed_memory()  # the server's allocator policy (cli.main)
    torch.set_num_threads(args.threads)
    loaded = load_model(path, device="cpu")
    model, n = loaded.model, args.tokens
    scheduler = Scheduler(model, loaded.tokenizer)
    request = engine_request(loaded, scheduler, n)
    _load(request, 2, LENGTHS, 99)  # warm-up: the prompt cache holds the template's prefix, as in serve.py
    prompts = [loaded.prompt_ids([{"role": "user", "content": prompt_of(LENGTHS[k % 3], k)}]) for k in range(8)]
    c = min(_common_prefix(prompts[0], p, len(p)) for p in prompts[1:])  # the scheduler's own measure
    rests = [len(p) - c for p in prompts]
    longest = max(range(8), key=lambda k: len(prompts[k]))
    cache = KVCache(model.config, 8, max(len(p) for p in prompts) + 1, dtype=scheduler.dtype, zeroed=False)

    def pass_of(rows: list[int], start: int, ends: list[int]) -> float:
        ids = torch.tensor([[t for k, e in zip(rows, ends) for t in prompts[k][start:e]]])
        packed = Packed(rows, [start] * len(rows), [e - start for e in ends])
        t = time.perf_counter()
        with torch.inference_mode():
            hidden = model.forward_hidden(ids, start_pos=packed, cache=cache)[0]
            model.project(hidden[[o + e - start - 1 for o, e in zip(packed.offsets, ends)]])
        return time.perf_counter() - t

    def step(rows: int) -> float:
        at = torch.tensor([len(prompts[k]) for k in range(rows)])  # just past each prompt: only written K/V is read
        tokens = torch.tensor([prompts[k][-1] for k in range(rows)])
        t = time.perf_counter()
        with torch.inference_mode():
            model.decode_rows(tokens, at, torch.arange(rows), cache)
        return time.perf_counter() - t

    pass_of(list(range(8)), 0, [c] * 8)  # the shared prefix in every row: the warm cache's part
    times: dict[str, list[float]] = {k: [] for k in ("tok_s", "p95", "pass8", "pass1", "step1", "step8")}
    def driver_gone():
        """End the idle driver thread now, its OpenMP team with it, rather than IDLE_EXIT_S later: two
        threads' teams at once make libgomp put every worker to sleep after each region
        (threads.release_thread_team), which more than doubled this thread's passes beside an idle driver."""
        scheduler.idle_exit_s = 0.0
        with scheduler._cond:  # its idle wait starts over, with no time to wait
            scheduler._cond.notify_all()
        for t in threading.enumerate():
            if t.name == "lmstudio-scheduler":
                t.join()
        scheduler.idle_exit_s = IDLE_EXIT_S

    for i in range(args.repeat + 1):  # one client's round and the floors' timings alternate: drift hits both
        one = _load(request, 1, LENGTHS, i)
        driver_gone()
        got = {"tok_s": one["tok_s"], "p95": one["ttft_p95"],
               "pass8": pass_of(list(range(8)), c, [len(p) for p in prompts]),
               "pass1": pass_of([longest], c, [len(prompts[longest])]),
               "step1": statistics.median(step(1) for _ in range(5)),
               "step8": statistics.median(step(8) for _ in range(5))}
        release_thread_team()  # this thread's team goes before the driver's comes back
        if i:  # the first round warms
            for k, v in got.items():
                times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    rounds = [dict(zip(times, vals)) for vals in zip(*times.values())]

    def paired(f) -> float:  # the median of a round's own figures' ratio: drift between rounds cancels
        return statistics.median(f(r) for r in rounds)

    ttft_floor = paired(lambda r: r["pass8"] / r["p95"])
    ceiling = paired(lambda r: 8 * n / (r["pass8"] + (n - 1) * r["step8"]) / r["tok_s"])
    floor_ceiling = paired(lambda r: 8 * n / (r["pass8"] + (n - 1) * r["step1"]) / r["tok_s"])
    needed = paired(lambda r: (8 * n / (3 * r["tok_s"]) - r["pass8"]) / (n - 1))
    one_tok_s, one_p95, p8, p1, s1, s8 = (med[k] for k in ("tok_s", "p95", "pass8", "pass1", "step1", "step8"))
    return [
        f"{Path(path).name}: the 8 prompts {sum(len(p) for p in prompts)} tokens, {c} of each shared "
        f"(cached), {sum(rests)} to prefill; the longest {len(prompts[longest])} ({rests[longest]} to prefill)",
        f"- one client (engine): {one_tok_s:.1f} tok/s, p95 TTFT {one_p95 * 1e3:.0f} ms",
        f"- the longest prompt's rest alone: {p1 * 1e3:.0f} ms ({rests[longest] / p1:.0f} tok/s); the 8 prompts' "
        f"rests in one pass: {p8 * 1e3:.0f} ms ({sum(rests) / p8:.0f} tok/s) -> 8-client p95 TTFT >= "
        f"{ttft_floor:.2f}x one client's (target <= 3x: {'reachable' if ttft_floor <= 3 else 'OUT OF REACH'})",
        f"- decode step: 1 row {s1 * 1e3:.2f} ms, 8 rows {s8 * 1e3:.2f} ms ({s8 / s1:.2f}x)",
        f"- 8-client tok/s <= {ceiling:.2f}x one client's with this 8-row step; <= {floor_ceiling:.2f}x if 8 rows "
        f"cost what 1 does (target >= 3x: {'reachable' if floor_ceiling >= 3 else 'OUT OF REACH'}); 3x needs an "
        f"8-row step of {needed * 1e3:.2f} ms" + (" (less than one row's)" if needed < s1 else ""),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="model folder or GGUF file (repeatable; default: the "
                                                    "bundled model and SmolLM2-135M's GGUF when present)")
    p.add_argument("--tokens", type=int, default=48, help="new tokens per request (serve.py's default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=8, help="timed rounds")
    args = p.parse_args()
    models = args.model or [str(BUNDLED)] + ([str(SMOLLM2)] if SMOLLM2.is_file() else [])
    print(f"bench/serve_bounds.py on {machine()}: {args.tokens} new tokens per request, {args.threads} threads")
    for path in models:
        print("\n".join(bounds(path, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
