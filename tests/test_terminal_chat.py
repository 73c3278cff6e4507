"""`lmstudio-lite chat`: in-process logic, then the real command in a pseudo-terminal (pexpect)."""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pexpect
import pytest
from fixtures_models import model_home, slow_chat  # noqa: F401  (fixtures)

from lmstudio_lite import load_model
from lmstudio_lite.terminal_chat import ChatSession, chat_loop, run_chat

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(model_home):  # noqa: F811
    return load_model(model_home / "models" / "tiny-chat", device="cpu", dtype="float32")


def greedy_reply(model, messages, n=30) -> str:
    return "".join(model.generate(messages, max_new_tokens=n, temperature=0))


def run_lines(session, lines) -> str:
    out, feed = io.StringIO(), iter(lines)

    def read(prompt):
        out.write(prompt)
        return next(feed)  # StopIteration never happens: the lines end with /quit

    assert chat_loop(session, read=read, out=out) == 0
    return out.getvalue()


# -- in process ---------------------------------------------------------------------------
def test_session_streams_keeps_history_and_saves(tiny, tmp_path):
    session = ChatSession(tiny, system="Be kind.", max_new_tokens=20, temperature=0)
    target = tmp_path / "chat.json"
    text = run_lines(session, ["Tell me about a cat", "/help", "/bogus", f"/save {target}", "/quit"])
    first = greedy_reply(tiny, [{"role": "system", "content": "Be kind."},
                                {"role": "user", "content": "Tell me about a cat"}], 20)
    assert first in text and "/save FILE" in text and "unknown command /bogus" in text
    saved = json.loads(target.read_text())
    assert saved["model"] == "tiny-chat"
    assert saved["messages"] == [{"role": "system", "content": "Be kind."},
                                 {"role": "user", "content": "Tell me about a cat"},
                                 {"role": "assistant", "content": first}]


def test_second_turn_sees_the_first_and_reset_forgets_it(tiny):
    session = ChatSession(tiny, max_new_tokens=12, temperature=0)
    run_lines(session, ["Who is Tom?", "And Sue?", "/quit"])
    assert [m["role"] for m in session.messages()] == ["user", "assistant", "user", "assistant"]
    assert session.messages()[3]["content"] == greedy_reply(tiny, session.messages()[:3], 12)
    out = run_lines(session, ["/reset", "/system -", "/quit"])
    assert "[conversation cleared]" in out and session.messages() == []


def test_overflow_drops_the_oldest_turns_with_a_notice(tiny, tmp_path):
    session = ChatSession(tiny, system="Short.", max_new_tokens=100, temperature=0)
    long = "the big red ball " * 40  # ~160 tokens a turn; the window holds 512
    out = run_lines(session, [long, long + "again", long + "and again", f"/save {tmp_path / 'c.json'}", "/quit"])
    assert "[context full: dropped the" in out
    assert session.messages()[0] == {"role": "system", "content": "Short."}
    assert len(session.messages()) < 1 + 6  # some turns left the context...
    assert len(json.loads((tmp_path / "c.json").read_text())["messages"]) == 1 + 6  # ...but not the transcript


def test_no_model_anywhere_is_a_clear_error(monkeypatch, capsys, model_home):  # noqa: F811
    from lmstudio_lite.services import registry

    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(model_home))
    monkeypatch.setattr(registry.Registry, "default_model", lambda self: None)
    args = SimpleNamespace(model=None, device="cpu", dtype="float32", system=None, max_new_tokens=8, temperature=0)
    assert run_chat(args) == 2
    assert "no model given and no bundled model found" in capsys.readouterr().err


# -- in a pseudo-terminal ----------------------------------------------------------------------
def spawn(home: Path, model: Path, *extra: str) -> pexpect.spawn:
    env = dict(os.environ, LMSTUDIO_LITE_HOME=str(home), OMP_NUM_THREADS="1", TERM="dumb", PYTHONUNBUFFERED="1")
    child = pexpect.spawn(sys.executable, ["-m", "lmstudio_lite", "chat", "--model", str(model), "--device", "cpu",
                                           "--dtype", "float32", "--temperature", "0", *extra],
                          cwd=str(REPO), env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect_exact("/help for commands")
    child.expect_exact(">>> ")
    return child


def finish(child: pexpect.spawn, how: str):
    {"eof": child.sendeof, "intr": child.sendintr, "quit": lambda: child.sendline("/quit")}[how]()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_terminal_chat_streams_and_runs_commands(model_home, tiny, tmp_path):  # noqa: F811
    child = spawn(model_home, model_home / "models" / "tiny-chat", "--max-new-tokens", "24", "--system", "Be kind.")
    try:
        child.sendline("Tell me about a cat")
        answer = greedy_reply(tiny, [{"role": "system", "content": "Be kind."},
                                     {"role": "user", "content": "Tell me about a cat"}], 24)
        child.expect_exact(answer.replace("\n", "\r\n")[:30])  # the terminal turns \n into \r\n
        child.expect_exact("tok/s]")
        child.expect_exact(">>> ")
        for line, shown in [("/system You are a pirate.", "[system prompt set]"),
                            ("/system", "'You are a pirate.'"), ("/reset", "[conversation cleared]"),
                            ("Who is Tom?", "tok/s]"), (f"/save {tmp_path / 'log.json'}", "[saved 2 messages")]:
            child.sendline(line)
            child.expect_exact(shown)
            child.expect_exact(">>> ")
        saved = json.loads((tmp_path / "log.json").read_text())
        assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
        assert saved["messages"][0]["content"] == "You are a pirate."
        finish(child, "quit")
    finally:
        child.close(force=True)


def test_ctrl_c_stops_a_reply_and_ctrl_c_or_d_at_the_prompt_quits(model_home, slow_chat):  # noqa: F811
    child = spawn(model_home, slow_chat, "--max-new-tokens", "3000")  # ~15 s of reply if not stopped
    try:
        child.sendline("hello")
        child.expect_exact("hello")  # the echoed line
        child.expect(r"\S{3}")  # some of the reply has streamed
        child.sendintr()
        child.expect(r"\[stopped, (\d+) tokens", timeout=10)
        assert int(child.match.group(1)) < 3000
        child.expect_exact(">>> ")
        child.sendline("/system still here")  # the chat goes on after a stopped reply
        child.expect_exact("[system prompt set]")
        child.expect_exact(">>> ")
        finish(child, "intr")
    finally:
        child.close(force=True)
    child = spawn(model_home, slow_chat)
    try:
        finish(child, "eof")
    finally:
        child.close(force=True)


def test_ctrl_c_quits_even_when_started_with_sigint_ignored(model_home, tiny):  # noqa: F811
    """A parent that ignores SIGINT (a background job, a test runner) passes that on
    through exec; the chat must still quit on Ctrl-C at the prompt."""
    import signal

    env = dict(os.environ, LMSTUDIO_LITE_HOME=str(model_home), OMP_NUM_THREADS="1", TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "lmstudio_lite", "chat", "--model",
                                           str(model_home / "models" / "tiny-chat"), "--device", "cpu"],
                          cwd=str(REPO), env=env, encoding="utf-8", timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        child.expect_exact(">>> ")
        finish(child, "intr")
    finally:
        child.close(force=True)
