"""Training defaults are defined once, in TrainSpec: `lmstudio-lite train`'s flags are generated from
its fields (names, types, choices, help) and the Train tab starts from its values."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from lmstudio_lite.training.cli import add_train_arguments, spec_from_args
from lmstudio_lite.training.spec import TrainSpec, defaults
from lmstudio_lite.services.train_actions import default_hparams


def parse(*flags: str) -> argparse.Namespace:
    return add_train_arguments(argparse.ArgumentParser()).parse_args(list(flags))


def test_no_flags_means_trainspec_defaults():
    spec = spec_from_args(parse("--model", "/m", "--data", "d.txt", "--steps", "5"))
    assert spec == TrainSpec(data="d.txt", base_model="/m", steps=5)


def test_every_field_has_a_flag_with_help():
    actions = {a.dest: a for a in add_train_arguments(argparse.ArgumentParser())._actions}
    for f in dataclasses.fields(TrainSpec):
        assert f.name in actions, f"TrainSpec.{f.name} has no flag"
        # the help is the field's attribute docstring: a new field needs one line under it
        assert actions[f.name].help and not actions[f.name].help.startswith("("), f"TrainSpec.{f.name}: no docstring"


def test_the_flags_people_use_keep_their_names_and_meaning():
    spec = spec_from_args(parse(
        "--model", "/m", "--data", "d.jsonl", "--out", "mine", "--steps", "40", "--lr", "1e-3", "--batch-size", "4",
        "--grad-accum", "2", "--seq-len", "64", "--optimizer", "sgd", "--weight-decay", "0", "--warmup-steps", "3",
        "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--lora-targets", "q, v,gate",
        "--eval-every", "0", "--save-every", "10", "--log-every", "2", "--probe", "Once", "--probe", "The dog",
        "--device", "cpu", "--precision", "fp32", "--threads", "1", "--seed", "7", "--val-fraction", "0.1",
        "--task-prompt", "Translate to French:"))
    assert (spec.base_model, spec.out_name, spec.steps, spec.lr, spec.batch_size, spec.grad_accum) == \
        ("/m", "mine", 40, 1e-3, 4, 2)
    assert (spec.seq_len, spec.optimizer, spec.weight_decay, spec.warmup_steps) == (64, "sgd", 0.0, 3)
    assert (spec.lora_rank, spec.lora_alpha, spec.lora_dropout, spec.lora_targets) == (4, 8.0, 0.1, ("q", "v", "gate"))
    assert (spec.eval_every, spec.save_every, spec.log_every, spec.probe_prompts) == (0, 10, 2, ["Once", "The dog"])
    assert (spec.device, spec.precision, spec.threads, spec.seed, spec.val_fraction, spec.task_prompt) == \
        ("cpu", "fp32", 1, 7, 0.1, "Translate to French:")
    scratch = spec_from_args(parse("--from-scratch", "--data", "c.txt", "--epochs", "1.5", "--vocab-size", "512",
                                   "--n-layer", "2", "--d-model", "64", "--n-head", "2", "--family", "gpt2",
                                   "--chat-template", "chatml"))
    assert (scratch.from_scratch, scratch.epochs, scratch.vocab_size, scratch.n_layer, scratch.d_model) == \
        (True, 1.5, 512, 2, 64)
    assert (scratch.n_head, scratch.family, scratch.chat_template, scratch.base_model) == (2, "gpt2", "chatml", None)
    assert not spec_from_args(parse("--model", "/m", "--data", "d", "--steps", "1", "--no-save-adapter")).save_adapter


@pytest.mark.parametrize("flags", [["--steps", "5", "--epochs", "1"], ["--optimizer", "adam"],
                                   ["--precision", "fp16"], ["--batch-size", "four"]])
def test_bad_flags_are_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as info:
        parse("--data", "d", *flags)
    assert info.value.code == 2 and "error:" in capsys.readouterr().err


def test_train_help_is_generated_without_importing_torch():
    code = ("import sys; from lmstudio_lite.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--lora-targets" in out.stdout and "--no-save-adapter" in out.stdout
    assert f"(default: {TrainSpec.lr})" in out.stdout and "Peak learning rate" in out.stdout


def test_the_train_tab_starts_from_trainspec_defaults():
    small_cpu = default_hparams(3_400_000, 4096, "cpu")
    assert (small_cpu["batch_size"], small_cpu["seq_len"]) == (defaults()["batch_size"], defaults()["seq_len"])
