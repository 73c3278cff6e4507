"""Many clients at once through `lmstudio-lite serve`: the scheduler (continuous batching and
the prompt cache) against the plain one-at-a-time queue, side by side in one run.

    python bench/serve.py                      # the bundled model and SmolLM2-135M (GGUF), 1-16 clients
    python bench/serve.py --quick              # the bundled model only, 1, 4 and 8 clients
    python bench/serve.py --model PATH ...     # any model folders or GGUF files
    python bench/serve.py --peer --engine      # also llama.cpp's server, and the engine without HTTP

For each model two real servers run at once, each in its own process on the same cores
(``LMSTUDIO_LITE_SCHEDULER=off`` gives the plain queue). For each client count, the plain
and the batched server are measured back to back (interleaved, ``--repeat`` times, medians):
every client is an official openai client in its own process (``ClientPool``, on the same cores)
streaming one chat completion with a prompt of mixed length (short, medium, long in turn; with fewer
clients than lengths each client sends one request per length, one after the other) and ``--tokens``
new tokens (EOS ignored).
Reported: aggregate tok/s (all new tokens / wall time), p50 and p95 time to first token,
median inter-token latency ((last text - first text) / (tokens - 1) per request), and the CPU the
server and the clients used, in cores.
Then a 10-turn chat (one client; each turn sends the whole conversation so far): the tenth
turn's time to first token against the first's.

``--peer`` adds llama.cpp's own server (``llama-server``: continuous batching over 8 slots, its prompt
cache, AMX on; bench/peer_llamacpp.py builds it once) on the same GGUF file (a model folder: our float32
export of it), measured in the same interleaved rounds with the same clients: what the engine that LM
Studio and Ollama run reaches on these cores. ``--engine`` runs the same load straight through our
Scheduler in this process (no HTTP, no client parsing): the engine's own ceiling on these cores.

Targets (issue 14, 2 CPU cores): aggregate tok/s at 8 clients >= 3x one client's; p95 TTFT at
8 clients <= 3x one client's; tenth-turn TTFT within 1.5x of the first turn's.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from timing import machine  # bench/, beside this file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLED = REPO / "models" / "lmstudio-lite-tiny"
SMOLLM2 = Path.home() / ".cache" / "lsl-peers" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCES = ["Lily found a red ball in the park.", "The dog ran after the ball and barked at the birds.",
             "Her mom called her home for dinner, and the sun went down behind the hills.",
             "Ben had a toy boat.", "They went to the lake to sail it, but the wind was too strong that day."]


def prompt_of(words: int, i: int) -> str:
    """A user message of about ``words`` words, different per client (no accidental cache hits)."""
    out, k = [], i
    while sum(len(s.split()) for s in out) < words:
        out.append(SENTENCES[k % len(SENTENCES)])
        k += 1
    return f"Story {i}: " + " ".join(out) + " What happens next?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, ready, what: str):
    """Poll ``url`` until ``ready(response)`` gives a true value (returned); the server's last words
    when it exits first."""
    import httpx

    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            got = ready(httpx.get(url, timeout=1))
            if got:
                return got
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"{what} did not start")


def start_server(model: str, plain: bool, threads: int):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), LMSTUDIO_LITE_HOME=tempfile.mkdtemp(prefix="bench-serve-"))
    if plain:
        env["LMSTUDIO_LITE_SCHEDULER"] = "off"
    proc = subprocess.Popen([sys.executable, "-m", "lmstudio_lite", "serve", "--model", model, "--port", str(port),
                             "--device", "cpu"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    name = wait_ready(proc, base + "/healthz", lambda r: r.json().get("model"), "server")
    return proc, base, name


def start_llama_server(model: str, threads: int, clients: int, context: int):
    """llama.cpp's own server on the same GGUF file (bench/peer_llamacpp.py's server_bin: a native
    build, AMX on): ``clients`` slots of ``context`` tokens decoded together (continuous batching),
    its prompt cache on, the file's chat template (--jinja, as ours renders it)."""
    import peer_llamacpp

    exe, port = peer_llamacpp.server_bin(), free_port()
    cmd = [str(exe), "-m", model, "--port", str(port), "-t", str(threads), "-tb", str(threads), "-np", str(clients),
           "-c", str(clients * context), "--jinja", "-cb"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, LD_LIBRARY_PATH=str(exe.parent)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base + "/health", lambda r: r.status_code == 200, "llama-server")
    return proc, base, Path(model).name


def one_request(client, name: str, messages: list[dict], tokens: int) -> dict:
    t0 = time.perf_counter()
    times, usage, text = [], {}, []
    for chunk in client.chat.completions.create(model=name, messages=messages, max_tokens=tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}):
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
            text.append(chunk.choices[0].delta.content)
    n = usage.completion_tokens
    return {"ttft": times[0] - t0, "itl": (times[-1] - times[0]) / max(n - 1, 1), "tokens": n, "end": times[-1],
            "text": "".join(text),
            "cached": usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far of process ``pid`` (a server) and of this one (it hands the clients their
    requests): on the same cores, what the clients take from the server shows beside its figures."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # after the command's name, which may hold spaces
    me = os.times()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), me.user + me.system


class ClientPool:
    """One process per concurrent client, each with its own official openai client, as separate users'
    programs are: as threads of one process, the clients' request building and stream parsing took turns
    on one GIL (eight bundled-model clients, the same server, rounds alternating: p95 TTFT 82 against
    68 ms, 1,915 against 2,200 tok/s). ``request(k, ...)`` runs on client k; its result carries the CPU
    seconds that client spent."""

    def __init__(self, n: int):
        ctx = multiprocessing.get_context("spawn")  # nothing of this process (torch's threads) carried over
        self.conns, self.procs = [], []
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(theirs,), daemon=True)
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    def request(self, k: int, base: str, name: str, messages: list[dict], tokens: int) -> dict:
        self.conns[k].send((base, name, messages, tokens))
        got = self.conns[k].recv()
        if isinstance(got, str):
            raise RuntimeError(f"client {k}: {got}")
        return got

    def close(self):
        for conn, proc in zip(self.conns, self.procs):
            conn.send(None)
            proc.join(10)


def _client_main(conn):
    import openai

    clients: dict[str, openai.OpenAI] = {}
    while (job := conn.recv()) is not None:
        base, name, messages, tokens = job
        if base not in clients:
            clients[base] = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
        cpu0 = os.times()
        try:
            got = one_request(clients[base], name, messages, tokens)
        except Exception as e:  # the bench stops and says why
            conn.send(f"{type(e).__name__}: {e}")
            continue
        cpu1 = os.times()
        conn.send({**got, "cpu": cpu1.user + cpu1.system - cpu0.user - cpu0.system})


def load_run(pool: ClientPool, base: str, name: str, clients: int, tokens: int, lengths: tuple[int, ...],
             round_: int) -> dict:
    """``clients`` openai clients at once against the server (see the module's docstring)."""
    return _load(lambda k, msg: pool.request(k, base, name, msg, tokens), clients, lengths, round_)


def engine_request(model, scheduler, tokens: int):
    """One request of the load straight through ``scheduler`` (no HTTP, no client): a function of
    the messages, timed as one_request times its chunks (first and last token)."""
    from lmstudio_lite.generation import SamplingParams

    def request(_, messages: list[dict]) -> dict:
        t0 = time.perf_counter()
        stream = scheduler.stream(model.prompt_ids(messages), SamplingParams(), tokens, ignore_eos=True)
        for _ in stream:
            pass
        stats, n = stream.stats, stream.stats["new_tokens"]
        return {"ttft": stats["ttft_s"], "tokens": n, "end": t0 + stats["total_s"],
                "itl": (stats["total_s"] - stats["ttft_s"]) / max(n - 1, 1)}

    return request


def _load(request, clients: int, lengths: tuple[int, ...], round_: int) -> dict:
    # Fewer clients than prompt lengths: each sends one request per length in turn, so one
    # client's figures cover the same mix of short and long prompts as eight clients'.
    waves = -(-len(lengths) // clients)
    results: list[dict] = []
    start = threading.Barrier(clients + 1)

    def run(i):
        start.wait()
        for w in range(waves):
            k = i + w * clients
            msg = [{"role": "user", "content": prompt_of(lengths[k % len(lengths)], 100 * round_ + k)}]
            results.append(request(i, msg))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    ttfts = sorted(r["ttft"] for r in results)
    return {"tok_s": sum(r["tokens"] for r in results) / wall, "ttft_p50": statistics.median(ttfts),
            "client_cpu": sum(r.get("cpu", 0.0) for r in results),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
            "itl": statistics.median(r["itl"] for r in results)}


def turns_run(client, name: str, turns: int, tokens: int, first_words: int, seed: int = 7) -> list[dict]:
    messages = [{"role": "system", "content": prompt_of(first_words, seed)}]
    out = []
    for k in range(turns):
        messages.append({"role": "user", "content": f"Turn {k}: and then?"})
        r = one_request(client, name, messages, tokens)
        messages.append({"role": "assistant", "content": r["text"]})
        out.append(r)
    return out


def engine_model(model: str, args) -> list[str]:
    """The same load (1 and 8 clients) in this process, straight through a Scheduler: what the
    engine itself allows, with no HTTP and no client parsing on the cores."""
    import torch

    from lmstudio_lite import load_model
    from lmstudio_lite.generation import Scheduler
    from lmstudio_lite.memory import keep_freed_memory

    keep_freed_memory()  # the allocator policy the server's entry point sets (cli.main)
    torch.set_num_threads(args.threads)
    loaded = load_model(model, device="cpu")
    scheduler = Scheduler(loaded.model, loaded.tokenizer)
    request = engine_request(loaded, scheduler, args.tokens)
    _load(request, 2, args.lengths, 99)  # warm-up
    runs: dict[int, list[dict]] = {1: [], 8: []}
    for rep in range(args.repeat):
        for c in runs:
            runs[c].append(_load(request, c, args.lengths, rep * 1000 + c))
    med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in runs.items()}
    one, eight = med[1], med[8]
    return [f"- engine alone (in this process, no HTTP): 1 client {one['tok_s']:.1f} tok/s, p95 TTFT "
            f"{one['ttft_p95'] * 1000:.0f} ms; 8 clients {eight['tok_s']:.1f} tok/s "
            f"({eight['tok_s'] / one['tok_s']:.2f}x), p95 TTFT {eight['ttft_p95'] * 1000:.0f} ms "
            f"({eight['ttft_p95'] / one['ttft_p95']:.2f}x)"]


def bench_model(model: str, args) -> list[str]:
    import openai

    lines = []
    modes = ["plain", "batched"]
    servers = {mode: start_server(model, mode == "plain", args.threads) for mode in modes}
    if args.peer:
        gguf = model
        if not model.endswith(".gguf"):  # a folder: llama.cpp runs our float32 export of it
            from lmstudio_lite.checkpoints.gguf_export import export_gguf

            gguf = str(export_gguf(model, Path(tempfile.mkdtemp(prefix="bench-serve-")) / f"{Path(model).name}.gguf"))
        modes.append("llama.cpp")
        info = __import__("httpx").get(servers["batched"][1] + "/v1/models").json()
        rows = next((c for c in info["data"] if "scheduler" in c), {}).get("scheduler", {})
        servers["llama.cpp"] = start_llama_server(gguf, args.threads, max(args.clients),
                                                  min(4096, rows.get("kv_row_tokens") or 4096))
    try:
        clients = {mode: openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
                   for mode, (_, base, _) in servers.items()}
        names = {mode: name for mode, (_, _, name) in servers.items()}
        bases = {mode: base for mode, (_, base, _) in servers.items()}
        info = __import__("httpx").get(servers["batched"][1] + "/v1/models").json()
        ctx = next((c for c in info["data"] if "scheduler" in c), {}).get("scheduler", {})
        lines.append(f"### {Path(model).name}  (KV rows {ctx.get('kv_rows')} x {ctx.get('kv_row_tokens')} tokens, "
                     f"max batch {ctx.get('max_batch')})")
        for mode in servers:  # warm up: first calls build caches, threads, the native kernel, every client's connection
            load_run(args.pool, bases[mode], names[mode], max(args.clients), 4, args.lengths, 99)
        table: dict[tuple[str, int], list[dict]] = {}
        for rep in range(args.repeat):
            for c in args.clients:
                for mode in modes:  # back to back: drift on a shared machine hits every mode alike
                    pid, cpu0, t0 = servers[mode][0].pid, cpu_seconds(servers[mode][0].pid), time.perf_counter()
                    run = load_run(args.pool, bases[mode], names[mode], c, args.tokens, args.lengths, rep * 1000 + c)
                    wall = time.perf_counter() - t0
                    server, here = (a - b for a, b in zip(cpu_seconds(pid), cpu0))
                    run["server_cores"], run["client_cores"] = server / wall, (run["client_cpu"] + here) / wall
                    table.setdefault((mode, c), []).append(run)
        med = {key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in table.items()}
        lines.append("| clients | mode | tok/s | TTFT p50 ms | TTFT p95 ms | ITL ms | CPU: server, clients (cores) |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|")
        for c in args.clients:
            for mode in modes:
                m = med[(mode, c)]
                lines.append(f"| {c} | {mode} | {m['tok_s']:.1f} | {m['ttft_p50'] * 1000:.0f} | "
                             f"{m['ttft_p95'] * 1000:.0f} | {m['itl'] * 1000:.1f} | "
                             f"{m['server_cores']:.2f}, {m['client_cores']:.2f} |")
        if 1 in args.clients and 8 in args.clients:
            for mode in modes:
                one, eight = med[(mode, 1)], med[(mode, 8)]
                thr, p95 = eight["tok_s"] / one["tok_s"], eight["ttft_p95"] / one["ttft_p95"]
                lines.append(f"- {mode}: 8-client tok/s = {thr:.2f}x one client's (target >= 3x: "
                             f"{'OK' if thr >= 3 else 'MISS'}); 8-client p95 TTFT = {p95:.2f}x one client's "
                             f"(target <= 3x: {'OK' if p95 <= 3 else 'MISS'})")
        small = (ctx.get("kv_row_tokens") or 4096) <= 512  # ten turns must fit the context window
        first_words, turn_tokens = (16, 5) if small else (args.first_words, args.turn_tokens)
        chats: dict[str, list[list[dict]]] = {mode: [] for mode in modes}
        for rep in range(args.repeat):  # a new conversation each time (no hits across them), modes interleaved
            for mode in modes:
                chats[mode].append(turns_run(clients[mode], names[mode], args.turns, turn_tokens, first_words,
                                             seed=7 + rep))
        for mode in modes:
            first = statistics.median(t[0]["ttft"] for t in chats[mode])
            last = statistics.median(t[-1]["ttft"] for t in chats[mode])
            ratio = last / first
            lines.append(f"- {mode}: turn 1 TTFT {first * 1000:.0f} ms, turn {args.turns} {last * 1000:.0f} ms "
                         f"({ratio:.2f}x; target <= 1.5x: {'OK' if ratio <= 1.5 else 'MISS'}); cached prompt "
                         f"tokens at turn {args.turns}: {chats[mode][-1][-1]['cached']}")
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # never hide what stopped the run behind a stuck server
                proc.kill()
                proc.wait(30)
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="model folder or GGUF file (repeatable; default: the "
                                                    "bundled model and SmolLM2-135M's GGUF when present)")
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--tokens", type=int, default=48, help="new tokens per request")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--turn-tokens", type=int, default=8)
    p.add_argument("--first-words", type=int, default=900, help="words of the chat's system prompt (models "
                                                                  "with a context over 512 tokens)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--engine", action="store_true", help="also the same load straight through the scheduler "
                                                         "in this process (the engine's own ratios)")
    p.add_argument("--peer", action="store_true", help="also llama.cpp's llama-server (same clients, prompts and "
                                                       "cores; a model folder as our f32 GGUF export): its ratios")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: still stop the servers (finally)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.lengths = (8, 40, 90)  # words: short, medium and long prompts in turn
    models = args.model or [str(BUNDLED)] + ([str(SMOLLM2)] if SMOLLM2.is_file() and not args.quick else [])
    if args.quick:
        args.clients, args.repeat = [1, 4, 8], 1
    print(f"bench/serve.py on {machine()}: {args.tokens} new tokens per request, {args.threads} threads per "
          f"server, repeat {args.repeat} (medians)")
    args.pool = ClientPool(max(args.clients))
    try:
        for model in models:
            print("\n".join(bench_model(model, args)), flush=True)
            if args.engine:
                print("\n".join(engine_model(model, args)), flush=True)
    finally:
        args.pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
