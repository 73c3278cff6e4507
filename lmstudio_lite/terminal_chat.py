"""``lmstudio-lite chat``: chat with a local model in the terminal, replies streamed.

Commands: /system TEXT, /reset, /save FILE, /help, /quit. Ctrl-C while a reply streams
stops that reply (the generation is cancelled within a token); Ctrl-C or Ctrl-D at the
prompt quits. When the conversation outgrows the context window the oldest turns are
dropped (the system prompt is kept) and a notice says so.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from .atomic import write_json
from .errors import user_message

HELP = """commands:
  /system TEXT   set the system prompt (/system alone shows it; /system - clears it)
  /reset         forget the conversation (the system prompt stays)
  /save FILE     write the conversation to FILE as JSON
  /help          this help
  /quit          leave (Ctrl-D or Ctrl-C at the prompt too)
Ctrl-C while a reply is streaming stops the reply."""
PROMPT = ">>> "


class ChatSession:
    """The conversation and the model: what is still in context, and the whole transcript."""

    def __init__(self, model, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.7):
        self.model, self.system = model, system or None
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.context: list[dict] = []  # turns the model still sees
        self.transcript: list[dict] = []  # every turn, for /save

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.context

    def reset(self):
        self.context, self.transcript = [], []

    def start_reply(self, text: str):
        """Add the user turn and start generating; returns the (lazy) stream."""
        turn = {"role": "user", "content": text}
        self.context.append(turn)
        self.transcript.append(turn)
        try:
            return self.model.generate(self.messages(), max_new_tokens=self.max_new_tokens,
                                       temperature=self.temperature, on_overflow="truncate")
        except BaseException:  # the turn alone does not fit, or Ctrl-C: take it back
            self.context.pop()
            self.transcript.pop()
            raise

    def forget(self, dropped: list[int]) -> int:
        """Remove turns the model dropped to fit (indexes into ``messages()``); -> how many."""
        offset = 1 if self.system else 0
        gone = {i - offset for i in dropped if i >= offset}
        self.context = [m for i, m in enumerate(self.context) if i not in gone]
        return len(gone)

    def add_reply(self, text: str):
        turn = {"role": "assistant", "content": text}
        self.context.append(turn)
        self.transcript.append(turn)

    def save(self, path: str) -> Path:
        out = Path(path).expanduser()
        head = [{"role": "system", "content": self.system}] if self.system else []
        data = {"model": self.model.name, "messages": head + self.transcript}
        write_json(out, data)
        return out


def stream_reply(stream, out=sys.stdout) -> str:
    """Print the deltas as they come; Ctrl-C cancels the generation instead of raising."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stream.cancel())
    try:
        for delta in stream:
            out.write(delta)
            out.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
        stream.close()
    return stream.text


def _reply(session: ChatSession, text: str, out) -> None:
    try:
        stream = session.start_reply(text)
    except ValueError as e:
        out.write(f"[{user_message(e)}]\n")
        return
    dropped = session.forget(stream.stats.get("dropped_turns") or [])
    if dropped:
        out.write(f"[context full: dropped the {dropped} oldest message(s) to make room]\n")
    reply = stream_reply(stream, out)
    session.add_reply(reply)
    s = stream.stats
    note = "stopped, " if s.get("finish_reason") == "cancelled" else ""
    out.write(f"\n[{note}{s.get('new_tokens', 0)} tokens, {s.get('decode_tok_s', 0.0):.1f} tok/s]\n")


def _command(session: ChatSession, line: str, out) -> bool:
    """Run a /command; -> False when the chat should end."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit", "/bye"):
        return False
    if name == "/help":
        out.write(HELP + "\n")
    elif name == "/reset":
        session.reset()
        out.write("[conversation cleared]\n")
    elif name == "/system":
        if arg:
            session.system = None if arg == "-" else arg
            out.write("[system prompt cleared]\n" if arg == "-" else "[system prompt set]\n")
        else:
            out.write(f"[system prompt: {session.system!r}]\n")
    elif name == "/save":
        if not arg:
            out.write("[usage: /save FILE]\n")
        else:
            try:
                out.write(f"[saved {len(session.transcript)} messages to {session.save(arg)}]\n")
            except OSError as e:
                out.write(f"[could not save: {user_message(e)}]\n")
    else:
        out.write(f"[unknown command {name}; /help lists them]\n")
    return True


def chat_loop(session: ChatSession, read=input, out=sys.stdout) -> int:
    """Read lines until /quit, Ctrl-D or Ctrl-C at the prompt."""
    while True:
        try:
            line = read(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        if not line:
            continue
        if line.startswith("/"):
            if not _command(session, line, out):
                return 0
            continue
        try:
            _reply(session, line, out)
        except KeyboardInterrupt:  # Ctrl-C before the reply began streaming (while encoding the prompt)
            out.write("\n[stopped]\n")


def _model_path(args) -> str | None:
    if args.model:
        return args.model
    from .paths import app_paths
    from .services.registry import Registry

    default = Registry(app_paths()).default_model()
    return default.path if default else None


def run_chat(args) -> int:
    """``lmstudio-lite chat [--model PATH|NAME] [--system TEXT] ...``."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        # Started from a process that ignores SIGINT (a background job, some test runners):
        # ignored signals survive exec, but an interactive chat must answer Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    path = _model_path(args)
    if path is None:
        print("error: no model given and no bundled model found; pass --model PATH "
              "(`lmstudio-lite models` lists local models)", file=sys.stderr)
        return 2
    from .paths import app_paths
    from .services.registry import Registry

    model = Registry(app_paths(), device=args.device, dtype=args.dtype, quant=args.quant).load(path)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    info = model.info()
    print(f"Chatting with {model.name} ({info['device']}, {info['quant']}, context {info['context_length']} tokens)."
          + ("" if info["has_chat_template"] else " It has no chat template: a generic one is used.")
          + "\n/help for commands; Ctrl-C stops a reply; Ctrl-D quits.", flush=True)
    session = ChatSession(model, args.system, args.max_new_tokens, args.temperature)
    return chat_loop(session)
