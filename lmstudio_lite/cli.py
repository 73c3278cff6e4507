"""The ``lmstudio-lite`` command: a table of subcommands, each a plain function.

``lmstudio-lite`` alone (or with only app flags) starts the app. Heavy imports
(torch, gradio) happen inside the functions so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


# model/quant.py's QTYPES, spelled out so that --help never imports torch (a test holds them equal).
QUANT_CHOICES = ("q8_0", "q4_0", "q4_1")


# -- argument groups ------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, model_required: bool = False):
    p.add_argument("--model", required=model_required,
                   help="model folder, GGUF file or the name of a local model (default: the bundled model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: best for the device)")
    p.add_argument("--quant", default=None, choices=QUANT_CHOICES,
                   help="quantize the weights at load in a GGUF block format (cached after the first load; "
                        "default: keep them float)")


def add_app_args(p: argparse.ArgumentParser):
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="make a public Gradio share link (login required)")
    p.add_argument("--auth", default=None, help="USER:PASS login for the UI")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")


def add_serve_args(p: argparse.ArgumentParser):
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1234)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")


def add_chat_args(p: argparse.ArgumentParser):
    add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system", default=None, help="system prompt")


def add_generate_args(p: argparse.ArgumentParser):
    add_model_args(p, model_required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object: prompt_ids, new_ids, text, stats")


def add_models_args(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true")


def add_train_args(p: argparse.ArgumentParser):
    from .training.cli import add_train_arguments

    add_train_arguments(p)


# -- commands -------------------------------------------------------------------
def cmd_app(args) -> int:
    from .ui.launch import run_app

    return run_app(args)


def cmd_serve(args) -> int:
    from .server.serve import run_serve

    return run_serve(args)


def cmd_chat(args) -> int:
    from .terminal_chat import run_chat

    return run_chat(args)


def cmd_train(args) -> int:
    from .training.cli import run_train

    return run_train(args)


def cmd_generate(args) -> int:
    from .api import load_model

    m = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    stream = m.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
                        ignore_eos=args.ignore_eos)
    if args.json:
        text = "".join(stream)
        print(json.dumps({"prompt_ids": m.tokenizer.encode(args.prompt), "new_ids": stream.new_ids,
                          "text": text, "stats": stream.stats}, ensure_ascii=False))
        return 0
    for delta in stream:
        print(delta, end="", flush=True)
    s = stream.stats
    print(f"\n[{s['new_tokens']} tokens, {s['decode_tok_s']:.1f} tok/s, first token {s['ttft_s'] * 1000:.0f} ms, "
          f"finish: {s['finish_reason']}]", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .paths import app_paths
    from .registry import Registry

    entries = Registry(app_paths()).list()
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("no local models found")
    for e in entries:
        params = f"{e.parameters / 1e6:.1f}M" if e.parameters else "?"
        print(f"{e.name:32} {e.family:8} {params:>8}  {e.source:9} {e.path}" + (f"  [{e.error}]" if e.error else ""))
    return 0


COMMANDS = {
    "app": (add_app_args, cmd_app, "start the web app (the default)"),
    "serve": (add_serve_args, cmd_serve, "run the OpenAI-compatible API without the UI"),
    "chat": (add_chat_args, cmd_chat, "chat in the terminal"),
    "generate": (add_generate_args, cmd_generate, "generate text from a prompt"),
    "train": (add_train_args, cmd_train, "fine-tune or train a model"),
    "models": (add_models_args, cmd_models, "list local models"),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    add, _, help_text = COMMANDS[command]
    p = argparse.ArgumentParser(prog="lmstudio-lite" + ("" if command == "app" else f" {command}"),
                                description=help_text)
    add(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: lmstudio-lite [COMMAND] [options]\n\ncommands:")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:10} {text}")
        print("\n`lmstudio-lite COMMAND --help` shows a command's options.")
        return 0
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "app"
    # No OMP_WAIT_POLICY=PASSIVE: measured, it cost chat 44% on a quiet machine.
    # A training job and chat share the CPU by owning separate cores instead
    # (device.claim_cpu_threads / inference_threads).
    args = build_parser(command).parse_args(argv)
    from .checkpoints.errors import CheckpointError

    try:
        return COMMANDS[command][1](args) or 0
    except (CheckpointError, ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
