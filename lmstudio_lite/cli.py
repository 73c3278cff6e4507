"""The ``lmstudio-lite`` command: a table of subcommands, each a plain function.

``lmstudio-lite`` alone (or with only app flags) starts the app. Heavy imports
(torch, gradio) happen inside the functions so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys


# model/quant.py's QTYPES, spelled out so that --help never imports torch (a test holds them equal).
QUANT_CHOICES = ("q8_0", "q4_0", "q4_1")
STREAM_INTERVAL_MS = 25  # services.STREAM_INTERVAL_S in milliseconds, for --help likewise


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
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (or a login) on every route, /v1 and Gradio's API")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    add_exposure_args(p)


def add_exposure_args(p: argparse.ArgumentParser):
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a non-loopback --host (or --share) with no --auth or --api-key")
    p.add_argument("--max-body-mb", type=float, default=None,
                   help="largest request body accepted, in MB (default 4; larger gets HTTP 413)")
    p.add_argument("--stream-interval-ms", type=_milliseconds, default=None,
                   help="a streamed API answer sends its text at most this often, joined (default "
                        f"{STREAM_INTERVAL_MS}; 0: a chunk per token)")


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10000 ms, not {text}")
    return value


def add_serve_args(p: argparse.ArgumentParser):
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1234)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    add_exposure_args(p)


def add_chat_args(p: argparse.ArgumentParser):
    add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system", default=None, help="system prompt")


def add_generate_args(p: argparse.ArgumentParser):
    add_model_args(p)
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
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a chat message through the model's chat template "
                        "(default: plain text for the model to continue)")
    p.add_argument("--json", action="store_true", help="print one JSON object: prompt_ids, new_ids, text, stats")
    p.add_argument("--logprobs", type=int, default=None, metavar="K",
                   help="with --json: each new token's log-probability (the model's log-softmax) and the top K "
                        "alternatives (0-20)")


def add_models_args(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true")


def add_export_args(p: argparse.ArgumentParser):
    from .checkpoints.gguf_export import QUANT_CHOICES

    p.add_argument("model", help="model folder or the name of a local model")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--quant", default="f32", choices=QUANT_CHOICES,
                   help="weight type (default f32; norms stay f32; q4_0 keeps the embedding in q8_0)")


def add_get_args(p: argparse.ArgumentParser):
    p.add_argument("repo", help="a Hugging Face Hub repository, owner/name")
    p.add_argument("--file", default=None, help="the file to fetch (a GGUF repo's quant); omit it to see the choices")


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
    from .services.api import load_model
    from .services.registry import model_or_default

    m = load_model(model_or_default(args.model), device=args.device, dtype=args.dtype, quant=args.quant)
    if args.logprobs is not None and not args.json:
        print("error: --logprobs needs --json", file=sys.stderr)
        return 2
    query = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    stream = m.generate(query, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
                        ignore_eos=args.ignore_eos, logprobs=args.logprobs)
    if args.json:
        text = "".join(stream)
        out = {"prompt_ids": m.prompt_ids(query), "new_ids": stream.new_ids, "text": text, "stats": stream.stats}
        if args.logprobs is not None:
            name = lambda i: m.tokenizer.token_strings([i])[0]  # noqa: E731
            out["logprobs"] = [{"id": e["id"], "token": e["text"], "logprob": e["logprob"],
                                "top_logprobs": [{"id": i, "token": name(i), "logprob": lp} for i, lp in e["top"]]}
                               for e in stream.logprobs]
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for delta in stream:
        print(delta, end="", flush=True)
    s = stream.stats
    if not stream.text and s["finish_reason"] == "stop":
        print(ENDED_AT_ONCE_CHAT if args.chat else ENDED_AT_ONCE, end="", file=sys.stderr)
    print(f"\n[{s['new_tokens']} tokens, {s['decode_tok_s']:.1f} tok/s, first token {s['ttft_s'] * 1000:.0f} ms, "
          f"finish: {s['finish_reason']}]", file=sys.stderr)
    return 0


# A story model given a finished sentence ("Tell me a story about a little dog.") often ends the
# text right there: without a word of explanation the command would look broken.
ENDED_AT_ONCE = ("(no text: the model ended the text right after the prompt. generate continues the prompt "
                 "as plain text; to ask for something, add --chat, or end the prompt mid-sentence, "
                 "e.g. \"Once upon a time\")")
ENDED_AT_ONCE_CHAT = "(no text: the model ended its reply at once; try another prompt or a higher --temperature)"


def cmd_models(args) -> int:
    from .paths import app_paths
    from .services.registry import Registry, entries_json, entries_table

    entries = Registry(app_paths()).list()
    if args.json:
        print(entries_json(entries))
        return 0
    print(entries_table(entries) if entries else "no local models found")
    return 0


def cmd_export(args) -> int:
    from .checkpoints.gguf_export import export_gguf
    from .paths import app_paths
    from .services.registry import Registry

    folder = Registry(app_paths()).resolve_folder(args.model)
    out = export_gguf(folder, args.gguf, args.quant)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.quant})")
    return 0


def cmd_get(args) -> int:
    from .errors import user_message
    from .paths import app_paths
    from .services.registry import device_memory
    from .services.download import DownloadError, fetch, gguf_files, list_files

    models, memory = app_paths().ensure().models, device_memory("cpu")
    try:
        if not args.file:
            choices = gguf_files(list_files(args.repo, memory)[0])
            if len(choices) > 1:
                print(f"{args.repo} has {len(choices)} GGUF files; choose one with --file NAME:", file=sys.stderr)
                for f in choices:
                    fits = "fits in memory" if f.fits else "too big for this machine's memory"
                    print(f"  {f.name:48} {f.quant or '?':8} {f.size / 1e6:9.1f} MB  {fits}", file=sys.stderr)
                return 2
        path = fetch(args.repo, args.file, models, memory, progress=_terminal_bar())
    except DownloadError as e:  # after the progress bar's line
        print(f"\nerror: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"\nsaved {path}")
    return 0


def _terminal_bar(width: int = 30):
    """A progress callback drawing one self-overwriting line on stderr (at most ~10 times a second)."""
    import time

    last = [0.0]

    def draw(done: int, total: int):
        now = time.monotonic()
        if now - last[0] < 0.1 and done < total:
            return
        last[0] = now
        frac = done / total if total else 0.0
        bar = "#" * int(frac * width)
        print(f"\r[{bar:<{width}}] {frac * 100:5.1f}%  {done / 1e6:8.1f} / {total / 1e6:.1f} MB", end="",
              file=sys.stderr, flush=True)

    return draw


COMMANDS = {
    "app": (add_app_args, cmd_app, "start the web app (the default)"),
    "serve": (add_serve_args, cmd_serve, "run the OpenAI-compatible API without the UI"),
    "chat": (add_chat_args, cmd_chat, "chat in the terminal"),
    "generate": (add_generate_args, cmd_generate, "generate text from a prompt"),
    "train": (add_train_args, cmd_train, "fine-tune or train a model"),
    "models": (add_models_args, cmd_models, "list local models"),
    "get": (add_get_args, cmd_get, "download a model from the Hugging Face Hub into the models folder"),
    "export": (add_export_args, cmd_export, "write a model folder as a GGUF file (llama.cpp, LM Studio, Ollama)"),
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
    from .memory import keep_freed_memory

    keep_freed_memory()  # freed activations kept for the next prefill pass (memory.py: why)
    # No OMP_WAIT_POLICY=PASSIVE: measured, it cost chat 44% on a quiet machine.
    # A training job and chat share the CPU by owning separate cores instead
    # (lmstudio_lite/threads.py).
    args = build_parser(command).parse_args(argv)
    from .errors import is_user_error, user_message

    try:
        return COMMANDS[command][1](args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: the traceback is what a report needs
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
