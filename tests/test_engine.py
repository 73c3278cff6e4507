"""The decode loop, with a MockModel whose logits follow a rule and a byte tokenizer: no weights."""
import codecs
import threading
import time

import pytest
import torch

from lmstudio_lite.generation import ContextOverflowError, Engine, SamplingParams
from lmstudio_lite.model.config import ModelConfig

EOS = 256
VOCAB = 260


class ByteTokenizer:
    """Ids 0..255 are bytes; 256 is EOS (special)."""

    eos_ids = [EOS]

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def decode_stream(self, skip_special_tokens=True):
        return _ByteDecodeStream(skip_special_tokens)


class _ByteDecodeStream:
    def __init__(self, skip_special_tokens):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # never splits a character
        self._skip = skip_special_tokens

    def step(self, token_id):
        if token_id >= 256:
            return None if self._skip else "<eos>"
        return self._utf8.decode(bytes([token_id])) or None

    def flush(self):
        return self._utf8.decode(b"", final=True) or None


class MockModel(torch.nn.Module):
    """Logits at each position: one-hot of ``rule(all ids up to and including it)``.

    With a cache it behaves like a real model: it writes its ids into the cache at
    ``start_pos`` and reads the earlier ones back from it, so a wrong ``start_pos`` or a
    broken cache changes the output.
    """

    def __init__(self, rule, max_seq_len=64, delay=0.0, peak=30.0):
        super().__init__()
        self.config = ModelConfig(family="llama", vocab_size=VOCAB, n_layer=1, n_head=1, d_model=4, d_ff=4,
                                  max_seq_len=max_seq_len)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device and a dtype
        self.rule, self.delay, self.peak = rule, delay, peak
        self.calls = []  # (T, start_pos, had_cache, last_only)
        self.active = self.max_active = 0
        self._count = threading.Lock()

    def forward(self, ids, start_pos=0, cache=None, last_only=False):
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self._forward(ids, start_pos, cache, last_only)
        finally:
            with self._count:
                self.active -= 1

    def _forward(self, ids, start_pos, cache, last_only):
        B, T = ids.shape
        self.calls.append((T, start_pos, cache is not None, last_only))
        if self.delay:
            time.sleep(self.delay)
        if cache is None:
            assert start_pos == 0, "without a cache the model sees the whole sequence"
            full = ids
        else:
            assert cache.k.dtype == self.anchor.dtype
            cache.k[0, :, 0, start_pos:start_pos + T, 0] = ids.to(cache.k.dtype)
            full = cache.k[0, :, 0, :start_pos + T, 0].long()
        logits = torch.zeros(B, T, VOCAB)
        for b in range(B):
            for t in range(T):
                logits[b, t, self.rule(full[b, :start_pos + t + 1].tolist())] = self.peak
        return logits[:, -1:] if last_only else logits


def script(text, prompt_len, then=EOS):
    """A rule that writes ``text`` after a prompt of ``prompt_len`` tokens, then ``then``."""
    data = text.encode("utf-8")

    def rule(prefix):
        i = len(prefix) - prompt_len
        return data[i] if i < len(data) else then
    return rule


def mixing(prefix):
    """A rule that depends on every earlier id and its position."""
    h = 7
    for i, x in enumerate(prefix):
        h = (h * 131 + x * (i + 3)) % 65521
    return h % 256


GREEDY = SamplingParams()


def test_greedy_output_follows_the_script():
    prompt = list(b"Hi")
    model = MockModel(script("Hello, world", len(prompt)))
    stream = Engine(model, ByteTokenizer()).stream(prompt, GREEDY, 50)
    deltas = list(stream)
    assert "".join(deltas) == stream.text == "Hello, world"
    assert all(deltas)
    assert stream.stats["finish_reason"] == "stop"  # EOS after the script
    assert stream.new_ids == list(b"Hello, world") + [EOS]
    # One prefill of the whole prompt, then one token at a time at increasing positions.
    assert model.calls[0] == (2, 0, True, True)
    assert [c[:2] for c in model.calls[1:]] == [(1, 2 + i) for i in range(12)]


def test_cache_and_no_cache_decoding_give_identical_tokens():
    prompt = [5, 17, 200, 3]
    model = MockModel(mixing)
    got = Engine(model, ByteTokenizer()).generate_ids(prompt, GREEDY, 20, ignore_eos=True)
    ids = list(prompt)
    for _ in range(20):  # reference: the whole sequence each step, no cache
        logits = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert got == ids[len(prompt):]
    assert len(set(got)) > 5  # the rule really varies


def test_cache_is_reused_across_generations():
    caches = []

    class CacheSpy(MockModel):  # records the cache object the engine hands the model
        def forward(self, ids, start_pos=0, cache=None, last_only=False):
            caches.append(cache)
            return super().forward(ids, start_pos, cache, last_only)

    engine = Engine(CacheSpy(mixing), ByteTokenizer(), device="cpu")
    first = engine.generate_ids([1, 2, 3], GREEDY, 10, ignore_eos=True)
    engine.generate_ids([9, 8], GREEDY, 10, ignore_eos=True)
    assert caches[0] is not None and all(c is caches[0] for c in caches)
    assert engine.generate_ids([1, 2, 3], GREEDY, 10, ignore_eos=True) == first  # stale entries ignored


def test_eos_stops_and_is_not_emitted():
    stream = Engine(MockModel(script("ok", 1)), ByteTokenizer()).stream([65], GREEDY, 30)
    assert list(stream) == ["o", "k"]
    assert stream.stats["finish_reason"] == "stop" and stream.new_ids[-1] == EOS


def test_ignore_eos_continues_to_the_limit():
    stream = Engine(MockModel(script("ok", 1, then=EOS)), ByteTokenizer()).stream([65], GREEDY, 6,
                                                                                    ignore_eos=True)
    assert "".join(stream) == "ok"
    assert stream.stats["finish_reason"] == "length" and stream.stats["new_tokens"] == 6
    assert stream.new_ids == [ord("o"), ord("k")] + [EOS] * 4


def test_stop_strings_are_never_emitted():
    stream = Engine(MockModel(script("a#b##c###d", 1)), ByteTokenizer()).stream([65], GREEDY, 30, stop=["###"])
    deltas = list(stream)
    assert "".join(deltas) == stream.text == "a#b##c"
    assert all(deltas) and stream.stats["finish_reason"] == "stop"
    assert stream.new_ids == list(b"a#b##c###")  # generation ended on the token completing the stop


def test_held_back_text_is_released_at_the_end():
    stream = Engine(MockModel(script("x##", 1)), ByteTokenizer()).stream([65], GREEDY, 30, stop=["###"])
    assert "".join(stream) == "x##" and stream.stats["finish_reason"] == "stop"


def test_a_watched_stream_hands_over_its_text_and_end():
    """watch/take on the engine's stream (a helper thread iterates it): the same text as iterating."""
    stream = Engine(MockModel(script("a#b##c###d", 1)), ByteTokenizer()).stream([65], GREEDY, 30, stop=["###"])
    woke = threading.Event()
    stream.watch(woke.set)
    text, ended = "", False
    while not ended:
        assert woke.wait(10)
        woke.clear()
        part, covered, ended, error = stream.take()
        text += part
        assert error is None and covered is None
    assert text == "a#b##c" and stream.stats["finish_reason"] == "stop"


def test_max_new_tokens_gives_length():
    stream = Engine(MockModel(script("abcdefgh", 1)), ByteTokenizer()).stream([65], GREEDY, 3)
    assert "".join(stream) == "abc"
    assert stream.stats["finish_reason"] == "length" and stream.stats["new_tokens"] == 3


def test_max_new_tokens_is_capped_to_the_context_window():
    model = MockModel(lambda prefix: 97, max_seq_len=10)
    stream = Engine(model, ByteTokenizer()).stream([1] * 7, GREEDY, 100)
    assert stream.max_new_tokens == 3
    assert "".join(stream) == "aaa" and stream.stats["finish_reason"] == "length"
    assert max(c[0] + c[1] for c in model.calls) <= 10


def test_utf8_characters_are_never_split():
    text = "héllo — 日本"
    deltas = list(Engine(MockModel(script(text, 1)), ByteTokenizer()).stream([65], GREEDY, 40))
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)


def test_context_overflow_raises_before_any_model_call():
    model = MockModel(mixing, max_seq_len=8)
    engine = Engine(model, ByteTokenizer())
    with pytest.raises(ContextOverflowError) as err:
        engine.stream(list(range(8)), GREEDY, 5)
    assert err.value.prompt_tokens == 8 and err.value.limit == 8
    assert "8 tokens" in str(err.value) and isinstance(err.value, ValueError)
    assert model.calls == []


@pytest.mark.parametrize("prompt, max_new, word", [([], 5, "empty"), ([1], 0, "max_new_tokens"),
                                                   ([1, 999], 5, "vocabulary")])
def test_bad_requests_raise_value_error(prompt, max_new, word):
    model = MockModel(mixing)
    with pytest.raises(ValueError, match=word):
        Engine(model, ByteTokenizer()).stream(prompt, GREEDY, max_new)
    assert model.calls == []


def test_stats_keys_present_and_sane():
    stream = Engine(MockModel(script("abcdef", 2), delay=0.002), ByteTokenizer()).stream([1, 2], GREEDY, 4)
    assert stream.stats["finish_reason"] is None and stream.stats["new_tokens"] == 0
    text = "".join(stream)
    s = stream.stats
    assert set(s) == {"prompt_tokens", "new_tokens", "finish_reason", "ttft_s", "decode_tok_s",
                      "prefill_ms", "total_s", "context_full"}
    assert s["context_full"] is False  # the token limit, not the context, ended it
    assert text == "abcd" and s["prompt_tokens"] == 2 and s["new_tokens"] == 4 and s["finish_reason"] == "length"
    assert 0 < s["prefill_ms"] / 1000 <= s["ttft_s"] <= s["total_s"]
    assert 0 < s["decode_tok_s"] < 1000  # 3 tokens after the first, >= 2 ms each


def test_single_token_has_zero_decode_rate():
    stream = Engine(MockModel(script("a", 1)), ByteTokenizer()).stream([1], GREEDY, 1)
    assert list(stream) == ["a"] and stream.stats["decode_tok_s"] == 0.0


def test_same_seed_same_output_different_seed_different():
    model = MockModel(mixing, peak=1.0)  # soft logits: sampling really is random
    engine = Engine(model, ByteTokenizer())
    run = lambda seed: engine.generate_ids([1, 2], SamplingParams(temperature=1.0, seed=seed), 30, ignore_eos=True)
    assert run(1) == run(1)
    assert run(1) != run(2)
    stream = engine.stream([1, 2], SamplingParams(temperature=1.0), 5)
    assert isinstance(stream.seed, int)


def test_repetition_penalty_in_the_engine():
    # 'a' scores 3, 'b' 2; penalty 2 halves a seen token's score, so the choice alternates.
    class Prefer(MockModel):
        def _forward(self, ids, start_pos, cache, last_only):
            out = torch.zeros(ids.shape[0], 1, VOCAB)
            out[..., 97], out[..., 98] = 3.0, 2.0
            return out
    engine = Engine(Prefer(None), ByteTokenizer())
    assert engine.generate_ids([97], SamplingParams(), 2) == [97, 97]
    assert engine.generate_ids([97], SamplingParams(repetition_penalty=2.0), 2) == [98, 97]
    assert engine.generate_ids([1], SamplingParams(repetition_penalty=2.0), 3) == [97, 98, 97]


def test_cancel_from_another_thread_ends_within_one_token():
    model = MockModel(lambda prefix: 97, max_seq_len=2000, delay=0.01)
    cancel = threading.Event()
    stream = Engine(model, ByteTokenizer()).stream([1], GREEDY, 1000, cancel=cancel)
    consumer = threading.Thread(target=lambda: list(stream))
    consumer.start()
    deadline = time.monotonic() + 30
    while stream.stats["new_tokens"] < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    at_cancel = stream.stats["new_tokens"]
    cancel.set()
    consumer.join(timeout=30)
    assert not consumer.is_alive()
    assert stream.stats["finish_reason"] == "cancelled"
    assert at_cancel >= 5 and stream.stats["new_tokens"] <= at_cancel + 1


def test_stream_cancel_is_checked_before_every_token():
    stream = Engine(MockModel(lambda prefix: 97, max_seq_len=200), ByteTokenizer()).stream([1], GREEDY, 100)
    got = []
    for delta in stream:
        got.append(delta)
        if len(got) == 3:
            stream.cancel()
    assert got == ["a"] * 3 and stream.stats["new_tokens"] == 3
    assert stream.stats["finish_reason"] == "cancelled"


def assert_engine_free(engine):
    """A generation started from another thread runs to its end (on a held engine it would wait)."""
    done = []
    t = threading.Thread(target=lambda: done.append(engine.generate_ids([1], GREEDY, 1)), daemon=True)
    t.start()
    t.join(30)
    assert done, "the engine is still held by a stream that ended"


def test_breaking_out_counts_as_cancelled_and_releases_the_engine():
    model = MockModel(lambda prefix: 97, max_seq_len=200)
    engine = Engine(model, ByteTokenizer())
    with engine.stream([1], GREEDY, 100) as stream:
        for _ in stream:
            break
    assert stream.stats["finish_reason"] == "cancelled" and stream.stats["total_s"] > 0
    for _ in engine.stream([1], GREEDY, 100):  # no name kept: dropping it frees the engine at once
        break
    assert_engine_free(engine)
    assert engine.generate_ids([1], GREEDY, 3) == [97, 97, 97]


def test_closing_before_iterating_is_cancelled():
    engine = Engine(MockModel(mixing), ByteTokenizer())
    stream = engine.stream([1], GREEDY, 5)
    assert not stream.wait_ended(0)  # not started: nothing has ended yet
    stream.close()
    assert stream.stats["finish_reason"] == "cancelled" and list(stream) == [] and stream.wait_ended(0)
    assert engine.generate_ids([1], GREEDY, 2)


def test_close_from_another_thread_returns_once_the_stream_has_ended():
    """Stop in a UI closes the stream from another thread than the one iterating it."""
    engine = Engine(MockModel(lambda prefix: 97, max_seq_len=2000, delay=0.01), ByteTokenizer())
    stream = engine.stream([1], GREEDY, 1000)
    started, got = threading.Event(), []

    def consume():
        for delta in stream:
            got.append(delta)
            started.set()
    consumer = threading.Thread(target=consume)
    consumer.start()
    assert started.wait(30) and not stream.wait_ended(0)
    stream.close()
    assert stream.wait_ended(0) and stream.finish_reason == "cancelled"
    consumer.join(30)
    assert not consumer.is_alive() and stream.text == "".join(got)
    assert engine.generate_ids([1], GREEDY, 2) == [97, 97]  # the engine was let go


def test_model_error_releases_the_engine():
    calls = []

    def rule(prefix):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 97
    engine = Engine(MockModel(rule), ByteTokenizer())
    stream = engine.stream([1], GREEDY, 10)
    with pytest.raises(RuntimeError, match="boom"):
        list(stream)
    assert stream.stats["finish_reason"] == "error"
    assert_engine_free(engine)


def test_consumer_code_does_not_run_in_inference_mode():
    for _ in Engine(MockModel(script("ab", 1)), ByteTokenizer()).stream([1], GREEDY, 5):
        assert not torch.is_inference_mode_enabled()


def test_two_threads_streaming_at_once_each_get_their_own_output():
    # The rule echoes the prompt's first byte, so each request has its own exact answer.
    model = MockModel(lambda prefix: prefix[0], max_seq_len=100, delay=0.002)
    engine = Engine(model, ByteTokenizer())
    results = {}

    def work(letter):
        stream = engine.stream([ord(letter)], GREEDY, 15)
        results[letter] = "".join(stream)

    threads = [threading.Thread(target=work, args=(c,)) for c in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {c: c * 15 for c in "xyz"}
    assert model.max_active == 1  # never two generations inside the model at once


def test_closing_on_the_last_delta_keeps_the_real_reason():
    stream = Engine(MockModel(lambda prefix: 97, max_seq_len=100), ByteTokenizer()).stream([1], GREEDY, 3)
    for i, _ in enumerate(stream, 1):
        if i == 3:
            stream.close()
            break
    assert stream.stats["finish_reason"] == "length"


def test_generation_yields_the_cores_a_cpu_job_holds():
    """While a job claims CPU threads, a generation started in another thread runs on
    what is left (at least one); once the claim ends, the next one gets them all back."""
    from lmstudio_lite import threads

    seen = []

    class CountingModel(MockModel):
        def forward(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return super().forward(*args, **kwargs)

    def generate():
        prompt = list(b"Hi")
        list(Engine(CountingModel(script("Hello", len(prompt))), ByteTokenizer()).stream(prompt, GREEDY, 10))

    full = threads.inference_threads()
    with threads.claim_cpu_threads(full):
        assert threads.inference_threads() == 1
        t = threading.Thread(target=generate)
        t.start()
        t.join()
    assert seen and set(seen) == {1}
    seen.clear()
    t = threading.Thread(target=generate)
    t.start()
    t.join()
    assert threads.inference_threads() == full
    assert set(seen) == {full}
