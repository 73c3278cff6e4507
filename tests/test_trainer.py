"""The training loop on tiny models: loss falls, resume is exact, checkpoints survive a crash,
divergence stops the run, and the finished folder loads here and in transformers alike."""
from __future__ import annotations

import json
import math
import os
import threading

import pytest
import torch

from helpers_training import make_base, write_jsonl, write_text
from lmstudio_lite.paths import app_paths
from lmstudio_lite.training import checkpointing
from lmstudio_lite.training.checkpointing import load_checkpoint, save_checkpoint
from lmstudio_lite.training.run import run_training
from lmstudio_lite.training.schedule import lr_at
from lmstudio_lite.training.spec import TrainSpec
from lmstudio_lite.training.trainer import CausalLMLoss, Hooks, Trainer, TrainingError
from lmstudio_lite.training.watch import ValWatch


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {"llama": make_base(root / "llama"), "gpt2": make_base(root / "gpt2", family="gpt2")}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path / "home"))
    return app_paths()


@pytest.fixture()
def text_file(tmp_path):
    return write_text(tmp_path / "data.txt")


def spec_for(base, data, **kw) -> TrainSpec:
    settings = dict(data=str(data), base_model=str(base), steps=6, lr=3e-3, batch_size=4, seq_len=32,
                    eval_every=0, save_every=0, threads=1)
    settings.update(kw)
    return TrainSpec(**settings)


def losses(paths, run_id) -> list[float]:
    lines = (paths.runs / run_id / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def cancel_at(step: int):
    """(cancel event, hooks) that ask for a cancel once ``step`` is done: like pressing Cancel."""
    ev = threading.Event()
    return ev, Hooks(on_step=lambda r: ev.set() if r["step"] >= step else None)


# -- the loop ---------------------------------------------------------------------------
def test_loss_falls_and_metrics_are_complete(bases, home, text_file):
    spec = spec_for(bases["llama"], text_file, steps=10, eval_every=5)
    result = run_training(spec)
    assert result.state == "finished" and result.step == 10
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.3
    for key in ("step", "epoch", "loss", "lr", "tokens_per_s", "elapsed_s"):
        assert key in lines[0]
    evals = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    assert evals[1]["val_loss"] < evals[0]["val_loss"]
    assert math.isclose(evals[1]["val_ppl"], math.exp(evals[1]["val_loss"]))
    assert evals[0]["probes"] and {"prompt", "output"} <= set(evals[0]["probes"][0])


@pytest.mark.parametrize("kind", ["full+accum", "lora+dropout"])
def test_resume_continues_exactly_like_an_uninterrupted_run(bases, home, text_file, kind):
    extra = dict(grad_accum=2, batch_size=2) if kind == "full+accum" else dict(lora_rank=4, lora_dropout=0.2)
    straight = run_training(spec_for(bases["llama"], text_file, eval_every=3, **extra))
    ev, hooks = cancel_at(3)
    first = run_training(spec_for(bases["llama"], text_file, eval_every=3, **extra), cancel=ev, hooks=hooks)
    assert first.state == "cancelled" and first.step == 3 and first.model_path is None
    resumed = run_training(None, resume=first.run_id)
    assert resumed.state == "finished" and resumed.step == 6 and resumed.model_path.is_dir()
    want, got = losses(home, straight.run_id), losses(home, first.run_id)
    assert len(got) == 6
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    with pytest.raises(TrainingError, match="already finished"):
        run_training(None, resume=first.run_id)


def test_checkpoint_survives_a_crash_between_temp_write_and_rename(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(run_dir, {"w": torch.ones(3)}, {"step": 1})
    real = os.replace
    for crash_on in ("checkpoint.prev", "checkpoint"):  # moving the old one aside; moving the new one in
        def crashing(src, dst, crash_on=crash_on):
            if str(dst).endswith(crash_on) and "checkpoint" in str(src):
                raise OSError("simulated power cut")
            return real(src, dst)
        monkeypatch.setattr(checkpointing.os, "replace", crashing)
        with pytest.raises(OSError, match="power cut"):
            save_checkpoint(run_dir, {"w": torch.zeros(3)}, {"step": 2})
        monkeypatch.setattr(checkpointing.os, "replace", real)
        weights, state = load_checkpoint(run_dir)
        assert state["step"] == 1 and torch.equal(weights["w"], torch.ones(3)), crash_on
    save_checkpoint(run_dir, {"w": torch.full((3,), 5.0)}, {"step": 3})  # and the next save cleans up
    assert load_checkpoint(run_dir)[1]["step"] == 3
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint"]


def test_crash_while_saving_then_resume_gives_the_same_run(bases, home, text_file, monkeypatch):
    straight = run_training(spec_for(bases["llama"], text_file))
    real, calls = os.replace, {"n": 0}

    def crash_second_save(src, dst):
        if str(src).endswith("checkpoint.tmp"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("simulated crash")
        return real(src, dst)
    monkeypatch.setattr(checkpointing.os, "replace", crash_second_save)
    with pytest.raises(OSError, match="simulated crash"):
        run_training(spec_for(bases["llama"], text_file, save_every=2))  # saves at 2, dies saving 4
    monkeypatch.setattr(checkpointing.os, "replace", real)
    run_id = max(p.name for p in home.runs.iterdir() if p.name != straight.run_id)
    assert load_checkpoint(home.runs / run_id)[1]["step"] == 2
    assert "simulated crash" in (home.runs / run_id / "log.txt").read_text()
    resumed = run_training(None, resume=run_id)
    assert resumed.state == "finished"
    assert losses(home, run_id) == pytest.approx(losses(home, straight.run_id), rel=1e-6, abs=1e-7)


def test_nan_loss_stops_the_run_with_a_clear_message(bases, home, text_file, monkeypatch):
    real, calls = CausalLMLoss.forward, {"n": 0}

    def poisoned(self, ids, labels):
        calls["n"] += 1
        out = real(self, ids, labels)
        return out * float("nan") if calls["n"] == 3 and self.training else out
    monkeypatch.setattr(CausalLMLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*learning rate"):
        run_training(spec_for(bases["llama"], text_file, save_every=1))
    run_dir = next(home.runs.iterdir())
    assert load_checkpoint(run_dir)[1]["step"] == 2  # the last good checkpoint is kept


def test_bf16_autocast_on_cpu_trains(bases, home, text_file):
    fp32 = run_training(spec_for(bases["llama"], text_file, steps=3))
    bf16 = run_training(spec_for(bases["llama"], text_file, steps=3, precision="bf16"))
    a, b = losses(home, fp32.run_id), losses(home, bf16.run_id)
    assert all(math.isfinite(x) for x in b)
    assert b == pytest.approx(a, abs=0.05)  # same run, bf16 rounding only


# -- the finished model -------------------------------------------------------------------
@pytest.mark.parametrize("family,lora", [("llama", 4), ("gpt2", 0)])
def test_finished_folder_loads_here_and_in_transformers_with_same_logits(bases, home, text_file, family, lora):
    import transformers as tf

    from lmstudio_lite import load_model

    spec = spec_for(bases[family], text_file, steps=4, lora_rank=lora, out_name=f"tuned-{family}", eval_every=2)
    result = run_training(spec)
    folder = result.model_path
    assert folder == home.models / f"tuned-{family}"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= names
    assert ("adapter" in names) == bool(lora)
    card = (folder / "README.md").read_text()
    assert "sha256" in card and "final validation loss" in card and "Sample outputs" in card
    ours = load_model(folder, device="cpu", dtype="float32")
    ids = torch.tensor([ours.tokenizer.encode("the cat sat on the log. once upon a time")])
    theirs = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)
    hf_tok = tf.AutoTokenizer.from_pretrained(folder)
    assert hf_tok("the cat sat")["input_ids"] == ours.tokenizer.encode("the cat sat")
    base_logits = load_model(bases[family], device="cpu", dtype="float32").logits(ids)
    assert (ours.logits(ids) - base_logits).abs().max() > 1e-3  # training changed the model


def test_from_scratch_with_a_new_tokenizer_gives_a_loadable_folder(home, text_file):
    import transformers as tf

    from lmstudio_lite import load_model

    spec = TrainSpec(data=str(text_file), from_scratch=True, vocab_size=400, n_layer=1, d_model=32, n_head=2,
                     steps=4, lr=3e-3, batch_size=4, seq_len=32, eval_every=0, threads=1, out_name="fresh")
    ev, hooks = cancel_at(2)
    first = run_training(spec, cancel=ev, hooks=hooks)
    assert first.state == "cancelled" and (first.run_dir / "base" / "tokenizer.json").is_file()
    result = run_training(None, resume=first.run_id)  # the new tokenizer and config come from the run
    assert result.state == "finished" and result.step == 4
    ours = load_model(result.model_path, device="cpu")
    assert ours.config.n_layer == 1 and ours.config.d_model == 32 and ours.tokenizer.vocab_size <= 400
    text = "once upon a time there was a small red fox"
    ids = ours.tokenizer.encode(text)
    assert ours.tokenizer.decode(ids) == text and len(ids) < len(text)  # merges were learned
    theirs = tf.AutoModelForCausalLM.from_pretrained(result.model_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(torch.tensor([ids])), theirs(torch.tensor([ids])).logits,
                                   rtol=1e-4, atol=1e-4)
    assert "".join(ours.generate("once upon", max_new_tokens=4)) is not None


def test_chat_data_trains_on_answers_and_probes_use_prompts(bases, home, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl")
    result = run_training(spec_for(bases["llama"], data, steps=2, eval_every=2, seq_len=48))
    last = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["probes"][0]["prompt"].endswith("### Assistant:\n")  # the fallback chat template's prompt


def test_out_name_taken_is_refused_before_training(bases, home, text_file):
    (home.models / "taken").mkdir(parents=True)
    with pytest.raises(TrainingError, match="already exists"):
        run_training(spec_for(bases["llama"], text_file, out_name="taken"))
    assert not home.runs.exists() or not any(home.runs.iterdir())


# -- spec and schedule -------------------------------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (dict(steps=0), "steps or epochs"), (dict(epochs=1.0), "not both"), (dict(lr=0), "learning rate"),
    (dict(optimizer="adam"), "optimizer"), (dict(lora_rank=2, lora_targets=("x",)), "LoRA targets"),
    (dict(base_model=None), "base model"), (dict(out_name="../evil"), "output name"),
    (dict(batch_size=0), "batch_size"), (dict(precision="fp8"), "precision"),
])
def test_spec_validation_messages(bad, match):
    settings = dict(data="d.txt", base_model="m", steps=5)
    settings.update(bad)
    with pytest.raises(ValueError, match=match):
        TrainSpec(**settings)


def test_spec_round_trips_and_counts_steps():
    spec = TrainSpec(data="d.txt", base_model="m", epochs=2.0, batch_size=4, grad_accum=2, lora_targets=["q"])
    assert TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.total_steps(n_train=20) == 5  # 40 examples / 8 per step
    assert spec.warmup(total=1000) == 50 and spec.warmup(total=10_000) == 100
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_schedule_warmup_then_cosine_to_the_floor():
    lrs = [lr_at(s, 1.0, 4, 20, 0.1) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lr_at(0, 1.0, 0, 1, 0.1) == 1.0
    linear = [lr_at(s, 1.0, 0, 11, 0.1, "linear") for s in range(11)]
    assert linear[0] == 1.0 and linear[5] == pytest.approx(0.55) and linear[-1] == pytest.approx(0.1)
    assert {lr_at(s, 1.0, 2, 20, 0.1, "constant") for s in range(2, 20)} == {1.0}


def test_val_watch_tracks_the_best_stops_early_and_warns_once_per_rising_streak():
    watch = ValWatch(patience=3, warn_after=2)
    verdicts = [watch.update(step, val, 0.5) for step, val in
                [(10, 3.0), (20, 2.0), (30, 2.5), (40, 2.9), (50, 3.2), (60, 1.9), (70, 2.4), (80, 2.6)]]
    assert [v.improved for v in verdicts] == [True, True, False, False, False, True, False, False]
    warned = [i for i, v in enumerate(verdicts) if v.warning]
    assert warned == [3, 7]  # the 2nd rise of each streak, once
    assert "2.000 → 2.900" in verdicts[3].warning and "training loss is 0.500" in verdicts[3].warning
    assert "step 20" in verdicts[3].warning
    assert [v.stop for v in verdicts] == [False] * 4 + [True, False, False, False]
    resumed = ValWatch(patience=3, warn_after=2)
    resumed.load_state_dict(watch.state_dict())
    assert resumed.update(90, 2.7).stop  # the count goes on after a resume: 3 evaluations since step 60
    assert not ValWatch().update(1, 9.0).stop  # patience 0 never stops


def scripted_evaluations(monkeypatch, val_losses: list[float]):
    """Trainer.evaluate returns these validation losses in turn (the real probes come with them), so a
    test can make a run overfit on cue."""
    real, queue = Trainer.evaluate, list(val_losses)

    def evaluate(self):
        out = real(self)
        out["val_loss"] = queue.pop(0)
        return out

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_the_best_evaluation_is_exported_not_the_last_step(bases, home, text_file, monkeypatch):
    """D11: validation loss 3.0, 2.0 (step 4), 2.5, 2.8: the exported model is the step-4 model (the same
    weights as a 4-step run on a constant schedule), the card says so, and the rise was warned of."""
    from safetensors.torch import load_file

    common = dict(scheduler="constant", warmup_steps=0, eval_every=2)
    short = run_training(spec_for(bases["llama"], text_file, steps=4, keep_best=False, **common))
    scripted_evaluations(monkeypatch, [3.0, 2.0, 2.5, 2.8])
    warnings = []
    hooks = Hooks(on_step=lambda r: warnings.append(r["warning"]) if r.get("warning") else None)
    best = run_training(spec_for(bases["llama"], text_file, steps=8, overfit_warn_evals=2, **common), hooks=hooks)
    assert best.state == "finished" and best.step == 8
    want = load_file(str(short.model_path / "model.safetensors"))
    got = load_file(str(best.model_path / "model.safetensors"))
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert "weights are those of step 4" in (best.model_path / "README.md").read_text()
    assert len(warnings) == 1 and "rose 2 evaluations in a row (2.000 → 2.800)" in warnings[0]
    result = json.loads((best.run_dir / "result.json").read_text())
    assert result["best"] == {"step": 4, "val_loss": 2.0}


def test_early_stopping_ends_the_run_with_the_best_model(bases, home, text_file, monkeypatch):
    scripted_evaluations(monkeypatch, [3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    result = run_training(spec_for(bases["llama"], text_file, steps=12, eval_every=2, early_stop_patience=2))
    assert result.state == "finished" and result.step == 8 and result.model_path.is_dir()
    log = (result.run_dir / "log.txt").read_text()
    assert "early stop at step 8" in log and "best weights: step 4" in log


def test_chunked_vocabulary_projection_matches_the_plain_loss(bases, monkeypatch):
    from lmstudio_lite.checkpoints.folder import load_weights
    from lmstudio_lite.training import loss as loss_mod

    model = load_weights(bases["llama"])
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100

    def loss_and_grad():
        model.zero_grad()
        loss = CausalLMLoss(model)(ids, labels)
        loss.backward()
        return loss.detach(), model.tok_emb.weight.grad.clone()
    plain = loss_and_grad()
    monkeypatch.setattr(loss_mod, "LOGIT_CHUNK", model.config.vocab_size * 7)  # 7 rows per chunk
    chunked = loss_and_grad()
    torch.testing.assert_close(chunked[0], plain[0])
    torch.testing.assert_close(chunked[1], plain[1])
    want = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, model.config.vocab_size),
                                             labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(plain[0], want.detach())


def test_cli_trains_ctrl_c_cancels_with_130_and_resume_finishes(bases, home, text_file, capsys):
    import signal

    from lmstudio_lite.training import cli

    flags = ["--model", str(bases["llama"]), "--data", str(text_file), "--steps", "400", "--lr", "1e-3",
             "--batch-size", "4", "--seq-len", "32", "--eval-every", "0", "--threads", "1"]

    def press_ctrl_c():
        import time
        while not any(len((r / "metrics.jsonl").read_text().splitlines()) >= 2
                      for r in home.runs.glob("*") if (r / "metrics.jsonl").exists()):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    assert cli.main(flags) == cli.EXIT_CANCELLED
    presser.join(10)
    err = capsys.readouterr().err
    assert "cancelled at step" in err and "--resume" in err
    (run_dir,) = list(home.runs.iterdir())
    step = load_checkpoint(run_dir)[1]["step"]
    assert 2 <= step < 400
    assert cli.main(["--resume", run_dir.name]) == 0  # the spec comes from the run folder
    assert "finished 400 steps" in capsys.readouterr().err
    assert cli.main(["--data", str(text_file)]) == 2  # no base model: a usage error
    assert "choose a base model" in capsys.readouterr().err


@pytest.mark.parametrize("frozen_head", [False, True])
def test_fused_linear_cross_entropy_matches_autograd(frozen_head):
    """Loss and both gradients of the fused projection + CE equal autograd through
    F.cross_entropy(h @ w), chunked or not; a frozen head (LoRA) gets no gradient."""
    from lmstudio_lite.training import loss as loss_mod

    g = torch.Generator().manual_seed(0)
    h0, w0 = torch.randn(37, 16, generator=g), torch.randn(16, 50, generator=g) * 0.5
    t = torch.randint(0, 50, (37,), generator=g)

    def run(fn):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_(not frozen_head)
        loss = fn(h, w)
        (loss * 0.7).backward()
        return loss.detach(), h.grad, w.grad
    ref = run(lambda h, w: torch.nn.functional.cross_entropy(h @ w, t, reduction="sum"))
    for chunk in (50 * 5, 1 << 22):  # 5 rows per chunk, then one chunk
        loss_mod.LOGIT_CHUNK, old = chunk, loss_mod.LOGIT_CHUNK
        try:
            got = run(lambda h, w: loss_mod.linear_cross_entropy(h, w, t))
        finally:
            loss_mod.LOGIT_CHUNK = old
        torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-4)
        if frozen_head:
            assert got[2] is None
        else:
            torch.testing.assert_close(got[2], ref[2], atol=1e-5, rtol=1e-4)


def test_fused_linear_cross_entropy_under_bf16_autocast():
    """Under CPU bf16 autocast the fused loss tracks autocast's own F.cross_entropy(h @ w)
    and leaves float32 gradients for float32 master weights."""
    from lmstudio_lite.training.loss import linear_cross_entropy

    g = torch.Generator().manual_seed(1)
    h0, w0 = torch.randn(64, 32, generator=g), torch.randn(32, 40, generator=g) * 0.3
    t = torch.randint(0, 40, (64,), generator=g)
    out = []
    for fn in (lambda h, w: torch.nn.functional.cross_entropy((h @ w).float(), t, reduction="sum"),
               lambda h, w: linear_cross_entropy(h, w, t)):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(h, w)
        loss.backward()
        out.append((loss.detach(), h.grad, w.grad))
    (ref_l, ref_h, ref_w), (l, gh, gw) = out
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(l, ref_l, atol=0.5, rtol=2e-2)
    torch.testing.assert_close(gh, ref_h, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(gw, ref_w, atol=3e-2, rtol=3e-2)


def test_auto_precision_is_bf16_autocast_only_where_the_cpu_runs_bf16(monkeypatch):
    from lmstudio_lite.training import run as run_mod

    cpu = torch.device("cpu")
    spec = TrainSpec(data="d.txt", base_model="m", steps=1)
    monkeypatch.setattr(run_mod, "cpu_has_native_bf16", lambda: True)
    assert run_mod.amp_dtype(spec, cpu) is torch.bfloat16
    assert run_mod.amp_dtype(TrainSpec(data="d.txt", base_model="m", steps=1, precision="fp32"), cpu) is None
    monkeypatch.setattr(run_mod, "cpu_has_native_bf16", lambda: False)
    assert run_mod.amp_dtype(spec, cpu) is None
    assert run_mod.amp_dtype(TrainSpec(data="d.txt", base_model="m", steps=1, precision="bf16"), cpu) is torch.bfloat16
