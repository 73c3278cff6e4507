"""The scheduler on real tiny models: batching, fairness, cancel, the prompt cache's exactness and isolation."""
import random
import threading
import time

import pytest
import torch
from fixtures_models import STORIES, build_random_llama, own_logprobs

from lmstudio_lite import load_model
from lmstudio_lite.generation import SamplingParams, Scheduler
from lmstudio_lite.model.kv_cache import Packed

GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def stories():
    return load_model(STORIES, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A small random Llama with a 4,096-token context whose greedy replies never end."""
    folder = build_random_llama(tmp_path_factory.mktemp("long") / "long", STORIES, d_model=64, n_layer=2,
                                d_ff=128, n_head=4, n_kv_head=2)
    return load_model(folder, device="cpu", dtype="float32")


def fresh(m, **kw) -> Scheduler:
    return Scheduler(m.model, m.tokenizer, **kw)


def wait_for(cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        time.sleep(0.002)
    return cond()


def run_all(sched, requests):
    """Start every request at once (all joined from this thread, then one consumer thread each:
    threads started one by one on a loaded machine joined several steps apart); -> their finished
    streams."""
    streams = [sched.stream(*r[:3], **(r[3] if len(r) > 3 else {})) for r in requests]
    for s in streams:
        next(s.waiting(0.01), None)  # joins now; a stream that must wait for a row yields its place
    threads = [threading.Thread(target=lambda s=s: [None for _ in s]) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return streams


def test_seeded_requests_give_the_same_tokens_alone_or_batched(stories):
    prompts = [stories.tokenizer.encode(p) for p in
               ("Once upon a time", "The cat sat", "Lily and Ben went to the park because", "A dog")]
    # rows at a temperature alone are picked together, filtered ones one by one: both must match
    sampled = [SamplingParams(temperature=1.0, top_p=0.9, seed=1), SamplingParams(temperature=1.0, seed=2),
               SamplingParams(temperature=0.8, seed=3), SamplingParams(temperature=1.0, top_p=0.9, seed=4)]
    sched = fresh(stories, cache_rows=0)
    alone = [sched.generate_ids(p, sp, 24, ignore_eos=True) for p, sp in zip(prompts, sampled)]
    steps = sched.info()["steps"]
    batched = run_all(sched, [(p, sp, 24, {"ignore_eos": True}) for p, sp in zip(prompts, sampled)])
    assert [list(s.new_ids) for s in batched] == alone
    assert sched.info()["steps"] - steps < sum(len(a) for a in alone) // 2  # they did run together


def test_prompts_prefilled_together_in_small_chunks_give_the_full_forward_logits(stories):
    """Rows of different lengths share padded passes of a few tokens each: every first token's
    logprobs must still be the model's own (padding and chunking leave no trace)."""
    tok = stories.tokenizer
    prompts = [tok.encode(p) for p in ("Once upon a time there was a big brown dog who liked to run and jump",
                                       "The cat sat", "Lily and Ben went to the park because the sun was out",
                                       "A little bird sang a song in the tall green tree by the river bank")]
    sched = fresh(stories, cache_rows=0, prefill_chunk=4)
    streams = run_all(sched, [(p, GREEDY, 2, {"ignore_eos": True, "logprobs": 3}) for p in prompts])
    for p, s in zip(prompts, streams):
        ref = own_logprobs(stories.model, p, sched.dtype)[-1]
        first = s.logprobs[0]
        assert first["id"] == int(ref.argmax())
        assert first["logprob"] == pytest.approx(float(ref[first["id"]]), abs=1e-4)
        assert [t for t, _ in first["top"]] == ref.topk(3).indices.tolist()


def test_prompts_at_different_positions_are_prefilled_together_exactly(stories, monkeypatch):
    """Three prompts of different lengths share 3, 5 and 7 tokens with a cached row, so each starts
    at another position; admitted together, they take one pass side by side (``Packed``), each
    from its own cached prefix, and every first token is still the model's own."""
    tok = stories.tokenizer
    base = tok.encode("Once upon a time there was a little girl named Lily who liked to play")
    sched = fresh(stories, max_batch=1, cache_rows=4)
    sched.generate_ids(base, GREEDY, 2)
    tail = tok.encode(" big red dog ran to the park with his ball", add_special_tokens=False)
    prompts = [base[:k] + tail[:k + 2] for k in (3, 5, 7)]
    assert [next(i for i, (x, y) in enumerate(zip(p, base)) if x != y) for p in prompts] == [3, 5, 7]
    busy = sched.stream(tok.encode("The"), GREEDY, 400, ignore_eos=True)  # holds the one row meanwhile
    next(busy)
    streams = [sched.stream(p, GREEDY, 1, ignore_eos=True, logprobs=3) for p in prompts]
    for st in streams:
        st.watch(lambda: None)
    assert wait_for(lambda: all(st.queue_position for st in streams))
    passes, forward_hidden = [], sched.model.forward_hidden

    def counted(ids, start_pos=0, cache=None):
        if isinstance(start_pos, Packed):
            passes.append((list(start_pos.starts), list(start_pos.lengths)))
        return forward_hidden(ids, start_pos, cache)

    monkeypatch.setattr(sched.model, "forward_hidden", counted)
    sched.max_batch = 4  # all three join at the next step
    assert all(st.wait_ended(30) for st in streams)
    busy.close()
    assert passes == [([3, 5, 7], [5, 7, 9])]
    assert [st.stats["cached_tokens"] for st in streams] == [3, 5, 7]
    for p, st in zip(prompts, streams):
        ref = own_logprobs(stories.model, p, sched.dtype)[-1]
        first = st.logprobs[0]
        assert first["id"] == int(ref.argmax())
        assert first["logprob"] == pytest.approx(float(ref[first["id"]]), abs=1e-4)
        assert [t for t, _ in first["top"]] == ref.topk(3).indices.tolist()


def test_watched_streams_are_handed_their_text_by_the_driver(stories):
    """watch/take, the server's way: the same text as iterating, ``notify`` called from one thread
    (the driver) for all the streams, each take's logprob entries adding up to the text taken."""
    prompts = [stories.tokenizer.encode(p) for p in ("Once upon a time", "The cat sat", "A dog")]
    sched = fresh(stories, cache_rows=0)
    alone = ["".join(sched.stream(p, GREEDY, 12, ignore_eos=True)) for p in prompts]
    woke, callers = threading.Event(), set()

    def notify():
        callers.add(threading.get_ident())
        woke.set()

    streams = [sched.stream(p, GREEDY, 12, ignore_eos=True, logprobs=0) for p in prompts]
    for st in streams:
        st.watch(notify)
    texts, open_ = [""] * len(streams), set(range(len(streams)))
    while open_:
        assert woke.wait(10)
        woke.clear()
        for i in sorted(open_):
            text, covered, ended, error = streams[i].take()
            texts[i] += text
            assert error is None and "".join(e["text"] for e in streams[i].logprobs[:covered]) == texts[i]
            if ended:
                open_.discard(i)
    assert texts == alone
    assert len(callers) == 1 and threading.get_ident() not in callers
    early = sched.stream(prompts[0], GREEDY, 4)
    early.cancel()
    early.watch(woke.set)  # cancelled before it joined: it ends at once, with nothing
    assert early.take()[::2] == ("", True) and early.finish_reason == "cancelled"


def test_prompt_cache_is_exact_and_counts_cached_tokens(stories):
    tok = stories.tokenizer
    first = tok.encode("Once upon a time there was a little girl named Lily. She liked to")
    sched = fresh(stories)
    warm = sched.stream(first, GREEDY, 12, ignore_eos=True)
    "".join(warm)
    follow = first + list(warm.new_ids) + tok.encode(" Then she", add_special_tokens=False)
    cached = sched.stream(follow, GREEDY, 8, ignore_eos=True, logprobs=5)
    cached_text = "".join(cached)
    assert cached.stats["cached_tokens"] == len(first) + len(warm.new_ids) - 1  # all but the one token fed
    plain = fresh(stories, cache_rows=0).stream(follow, GREEDY, 8, ignore_eos=True, logprobs=5)
    assert "".join(plain) == cached_text and plain.stats["cached_tokens"] == 0
    for a, b in zip(cached.logprobs, plain.logprobs):
        assert a["id"] == b["id"] and a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
        assert [t for t, _ in a["top"]] == [t for t, _ in b["top"]]
    # and both equal one forward pass over the whole sequence (the model's own logits)
    ref = own_logprobs(stories.model, follow + list(plain.new_ids), sched.dtype)[len(follow) - 1:-1]
    got = torch.tensor([e["logprob"] for e in cached.logprobs])
    want = ref[torch.arange(len(got)), torch.tensor(list(cached.new_ids))]
    # within a float16 K/V's rounding: the reply's K/V came from decode steps, the reference's from
    # one prefill (float32 sums 1e-6 apart can round to float16 values one unit apart)
    assert float((got - want).abs().max()) < 1e-3


def test_a_float32_model_keeps_float16_kv_within_its_rounding(stories):
    """A float32 model stepping in the native kernel gets a float16 KV pool, as llama.cpp keeps its
    cache: half the bytes per row, the same greedy reply, and log-probabilities within float16's
    rounding of a float32 pool's, which gives the model's own float32 forward."""
    tok = stories.tokenizer
    prompt = tok.encode("Once upon a time there was a little girl named Lily. She liked to")
    half, full = fresh(stories), fresh(stories, kv_dtype=torch.float32)
    assert half.info()["kv_dtype"] == "float16" and full.info()["kv_dtype"] == "float32"
    assert 2 * half.info()["kv_bytes"] // half.info()["kv_rows"] == full.info()["kv_bytes"] // full.info()["kv_rows"]
    a, b = (s.stream(prompt, GREEDY, 24, ignore_eos=True, logprobs=0) for s in (half, full))
    "".join(a), "".join(b)
    assert list(a.new_ids) == list(b.new_ids)
    diff = max(abs(x["logprob"] - y["logprob"]) for x, y in zip(a.logprobs, b.logprobs))
    assert 0 < diff < 5e-3  # rounded, and by little
    ref = torch.log_softmax(stories.logits(torch.tensor([prompt + list(b.new_ids)]))[0, len(prompt) - 1:-1], dim=-1)
    want = ref[torch.arange(len(b.new_ids)), torch.tensor(list(b.new_ids))]
    assert float((torch.tensor([e["logprob"] for e in b.logprobs]) - want).abs().max()) < 1e-4


def test_cached_prefixes_never_leak_between_users(stories):
    tok = stories.tokenizer
    system = tok.encode("You are a kind storyteller. Tell short stories about animals.")
    alice = system + tok.encode(" Alice asks about a secret red dragon named Zorg", add_special_tokens=False)
    bob = system + tok.encode(" Bob asks about a small blue fish", add_special_tokens=False)
    shared = fresh(stories)
    a = shared.stream(alice, GREEDY, 20, ignore_eos=True, logprobs=0)
    "".join(a)
    b = shared.stream(bob, GREEDY, 20, ignore_eos=True, logprobs=0)
    "".join(b)
    b_alone = fresh(stories, cache_rows=0).stream(bob, GREEDY, 20, ignore_eos=True, logprobs=0)
    "".join(b_alone)
    common = next(i for i, (x, y) in enumerate(zip(alice, bob)) if x != y)
    assert 0 < b.stats["cached_tokens"] <= common  # only the shared system prompt came from Alice's row
    assert list(b.new_ids) == list(b_alone.new_ids)
    assert [e["logprob"] for e in b.logprobs] == pytest.approx([e["logprob"] for e in b_alone.logprobs], abs=1e-4)


def test_a_long_generation_delays_a_new_short_request_by_a_few_steps(long_model):
    sched = fresh(long_model)
    tok = long_model.tokenizer
    long = sched.stream(tok.encode("Tell me everything"), GREEDY, 2000, ignore_eos=True)
    it = iter(long)
    for _ in range(5):
        next(it)
    short = sched.stream(tok.encode("Hi there, how are you today? " * 8), GREEDY, 3, ignore_eos=True)
    "".join(short)
    assert short.stats["finish_reason"] == "length" and long.finish_reason is None
    assert short.stats["ttft_steps"] <= 2  # admitted at the next step, its prompt in one chunk
    long.close()
    assert sched.info()["running"] == 0 and long.finish_reason == "cancelled"


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancel_frees_the_row_within_one_step(long_model, how):
    sched = fresh(long_model)
    stream = sched.stream(long_model.tokenizer.encode("Go on"), GREEDY, 2000, ignore_eos=True)
    it = iter(stream)
    for _ in range(3):
        next(it)
    getattr(stream, how)()
    if how == "close":
        assert sched.info()["running"] == 0  # close() returns once the row is free
    assert wait_for(lambda: sched.info()["running"] == 0)
    assert stream.finish_reason == "cancelled" and stream.stats["cancel_steps"] <= 1


def test_32_clients_with_random_disconnects_leave_nothing_behind(stories):
    tok = stories.tokenizer
    row_bytes = 2 * 5 * 4 * 8 * 512 * 4  # stories260K: 5 layers, 4 KV heads of 8, 512 positions, float32
    sched = fresh(stories, max_batch=6, kv_budget_bytes=8 * row_bytes, cache_rows=2)
    rng = random.Random(0)
    ends = []
    positions = []

    def client(i):
        stream = sched.stream(tok.encode("Once upon a time " * rng.randint(1, 6)), SamplingParams(temperature=0.7),
                              rng.randint(5, 60), ignore_eos=True)
        leave = rng.choice(["finish", "cancel", "close", "drop", "queued"])
        it = iter(stream)
        if leave == "queued":  # leaves before its first token, probably while waiting for a row
            stream.cancel()
        for n, _ in enumerate(it):
            positions.append(stream.queue_position)
            if leave != "finish" and n == 2:
                if leave == "drop":
                    break
                getattr(stream, leave)()
        ends.append(stream.finish_reason or leave)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ends) == 32 and set(ends) <= {"length", "cancelled", "drop"}
    assert wait_for(lambda: sched.info()["running"] == 0 and sched.info()["waiting"] == 0)
    info = sched.info()
    assert info["kv_rows"] == 8 and info["kv_bytes"] <= 8 * row_bytes
    assert info["cached_prefixes"] <= info["kv_rows"]
    assert set(positions) == {None}  # a running stream has no queue position


def test_waiting_requests_know_their_queue_position(long_model):
    sched = fresh(long_model, max_batch=1)
    tok = long_model.tokenizer
    first = sched.stream(tok.encode("One"), GREEDY, 2000, ignore_eos=True)
    next(iter(first))
    later = [sched.stream(tok.encode(w), GREEDY, 2, ignore_eos=True) for w in ("Two", "Three")]
    threads = [threading.Thread(target=lambda s=s: "".join(s)) for s in later]
    for t in threads:
        t.start()
        assert wait_for(lambda: sched.info()["waiting"] == threads.index(t) + 1)
    assert [s.queue_position for s in later] == [1, 2]
    watcher = sched.stream(tok.encode("Four"), GREEDY, 2, ignore_eos=True)
    assert next(watcher.waiting(poll_s=0.01)) == 3  # what the Chat tab shows while it waits
    watcher.close()
    first.close()
    for t in threads:
        t.join(30)
    assert [s.stats["new_tokens"] for s in later] == [2, 2] and later[0].queue_position is None


def test_the_batched_pytorch_step_matches_the_full_forward_pass():
    """Without the native kernel (an unprepared model, as on a GPU) rows at different positions
    decode together through PyTorch; each row's logprobs equal the model's own full forward."""
    from lmstudio_lite.checkpoints.folder import load_weights, read_config
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer

    cfg, _ = read_config(STORIES)
    model = load_weights(STORIES, cfg, device="cpu", dtype=torch.float32).eval()
    tok = Tokenizer.from_folder(STORIES)
    sched = Scheduler(model, tok)
    prompts = [tok.encode(p) for p in ("Once", "The little dog ran to the park and", "Lily said")]
    streams = run_all(sched, [(p, GREEDY, 10, {"ignore_eos": True, "logprobs": 0}) for p in prompts])
    for p, s in zip(prompts, streams):
        ids = torch.tensor([p + list(s.new_ids)])
        with torch.no_grad():
            ref = torch.log_softmax(model(ids)[0, len(p) - 1:-1].float(), dim=-1)
        want = ref[torch.arange(10), torch.tensor(list(s.new_ids))]
        assert list(s.new_ids) == ref.argmax(-1).tolist()
        assert float((torch.tensor([e["logprob"] for e in s.logprobs]) - want).abs().max()) < 1e-4


def test_an_idle_scheduler_lets_its_model_go(stories):
    import gc
    import weakref

    sched = fresh(stories, idle_exit_s=0.05)
    sched.generate_ids(stories.tokenizer.encode("Once"), GREEDY, 2)
    gone = weakref.ref(sched)
    del sched
    t0 = time.monotonic()
    while gone() is not None and time.monotonic() - t0 < 10:
        time.sleep(0.05)
        gc.collect()
    assert gone() is None


def test_summarize_and_translate_instructions_hit_the_cache(stories):
    from lmstudio_lite.services.tasks.summarize import summary_messages
    from lmstudio_lite.services.tasks.translate import translate_messages

    for build in (lambda t: summary_messages(t, "Short paragraph"),
                  lambda t: translate_messages(t, "English", "French")):
        one, two = build("The cat sat on the mat all day."), build("A dog barked at the moon.")
        a, b = stories.prompt_ids(one), stories.prompt_ids(two)
        common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        "".join(stories.generate(one, max_new_tokens=2))
        second = stories.generate(two, max_new_tokens=2)
        "".join(second)
        assert second.stats["cached_tokens"] == common > 10
