"""What the Chat tab's events do: plain methods over a conversation dict (see ``chats.py``).

Each browser session holds its conversation in ``gr.State`` and mutates it in place, so a
reply stopped half-way is kept. The ``job`` state says what the queued generation step
should do next (``{"mode": "reply" | "continue"}``, or None: nothing to do) and holds the
running stream so Stop can cancel it within one token.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr

from ..chats import ChatStore, new_conversation, title_from, to_json, to_markdown
from ..services.tasks.chat import (DEFAULT_SYSTEM, PRESETS, build_messages, context_report, continue_prompt,
                          describe_dropped, make_settings, plain_prompt, too_long_for)
from .common import NoModelError, Throttle, current_model, friendly, notice_md, stats_md, warn
from .i18n import lang_of, say, tr


def view(conv: dict | None) -> list[dict]:
    """The Chatbot value for a conversation (fresh dicts: Gradio diffs against what it sent last)."""
    return [{"role": m["role"], "content": m["content"]} for m in (conv or {}).get("messages", [])]


def preset_values(name: str) -> tuple:
    p = PRESETS.get(name, PRESETS["Balanced"])
    return (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty,
            -1 if p.seed is None else p.seed)


class ChatHandlers:
    def __init__(self, services):
        self.services = services
        self.store = services.chats or ChatStore(services.paths.chats)

    # -- the conversation list -------------------------------------------------------------
    def choices(self, owned: list[str], lang: str | None = None) -> list[tuple[str, str]]:
        items = self.store.list()
        if self.services.shared:  # a share link: each visitor sees only what they created
            items = [s for s in items if s["id"] in set(owned or [])]
        return [(tr(lang, "chat.list_item", title=s["title"], n=s["turns"]), s["id"]) for s in items]

    def refresh_list(self, owned, conv, request: gr.Request = None):
        return self.list_update(owned, conv, lang_of(request))

    def list_update(self, owned, conv, lang: str | None = None):
        cid = conv["id"] if conv else None
        choices = self.choices(owned, lang)
        ids = [v for _, v in choices]
        return gr.update(choices=choices, value=cid if cid in ids else None)

    def _save(self, conv: dict | None, lang: str | None = None) -> str:
        """Save a non-empty conversation; -> "" or why it could not be saved (also toasted)."""
        if conv and conv.get("messages"):
            try:
                self.store.save(conv)
            except OSError as e:
                return warn(tr(lang, "chat.save_failed", error=friendly(e, lang)))
        return ""

    # -- sending ---------------------------------------------------------------------------
    def submit(self, message: str, conv, system: str, owned: list, request: gr.Request = None):
        """Append the user's message (or refuse it, saying why). -> input, conv, chatbot, notice, job, owned."""
        lang = lang_of(request)
        conv = conv or new_conversation(system or "")
        text = (message or "").strip()
        model = self.services.registry.current
        refusal = None
        if not text:
            refusal = tr(lang, "chat.empty")
        elif model is None and not self.services.loading:  # while it loads, the reply step waits for it
            refusal = _no_model_text(self.services, lang)
        elif model is not None and (too_long_for(model.context_length, text)
                                    or self._alone_too_long(model, system, text)):
            refusal = tr(lang, "chat.too_long", chars=f"{len(text):,}", context=f"{model.context_length:,}")
        if refusal:
            return message, conv, view(conv), notice_md(warn(refusal)), None, owned
        conv["system"] = system or ""
        if not conv["messages"]:
            conv["title"] = title_from(text)
        conv["messages"].append({"role": "user", "content": message.strip("\n")})
        owned = list(owned or []) + ([conv["id"]] if conv["id"] not in (owned or []) else [])
        unsaved = self._save(conv, lang)  # submit is not queued, so a toast would not show: say it inline
        return "", conv, view(conv), notice_md(unsaved), {"mode": "reply"}, owned

    @staticmethod
    def _alone_too_long(model, system, text) -> bool:
        report = context_report(model, build_messages(system, [{"role": "user", "content": text}]), 1)
        return report.error is not None

    def run(self, job, conv, system, temperature, top_p, top_k, min_p, rep, max_new, seed, stop,
            request: gr.Request = None):
        """Stream the reply the job asks for. Yields conv, chatbot, stats, notice."""
        lang = lang_of(request)
        if not job or conv is None:  # the message was refused: leave what the first step showed
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        try:
            settings = make_settings(temperature, top_p, top_k, min_p, rep, max_new, seed, stop)
            stream, msg, note = self._start(current_model(self.services, lang), job, conv, settings, lang)
        except Exception as e:
            yield conv, view(conv), "", notice_md(warn(friendly(e, lang)))
            return
        job["stream"], job["msg"], job["before"] = stream, msg, msg["content"]
        throttle = Throttle()
        yield conv, view(conv), "", notice_md(note)
        try:
            for position in getattr(stream, "waiting", lambda: ())():  # the model serves others first
                yield conv, view(conv), "", notice_md(tr(lang, "chat.waiting", position=position))
            for _ in stream:
                keep_reply(job)
                if throttle.ready():
                    yield conv, view(conv), stats_md(stream.stats, lang), notice_md(note)
        except Exception as e:
            note = warn(friendly(e, lang))
        finally:
            stream.close()  # at once on Stop (the stream is cancelled): frees the model
            keep_reply(job)
            self._save(conv, lang)
        yield conv, view(conv), stats_md(stream.stats, lang), notice_md(note)

    def _start(self, model, job, conv, settings, lang: str | None = None):
        """Begin generating: -> (stream, the message being written, a note on what was cut)."""
        kwargs = settings.generate_kwargs()
        if job["mode"] == "continue":
            tok = model.tokenizer
            prompt = plain_prompt(tok, continue_prompt(tok, build_messages(conv.get("system"), conv["messages"])))
            stream = model.generate(prompt, on_overflow="truncate", **kwargs)
            cut = stream.stats.get("truncated_tokens", 0)
            note = tr(lang, "chat.cut_oldest", cut=cut) if cut else ""
            return stream, credit(conv["messages"][-1], model.name), note
        answered_since(conv)
        messages = build_messages(conv.get("system"), conv["messages"])
        stream = model.generate(messages, on_overflow="truncate", **kwargs)
        dropped = stream.stats.get("dropped_turns") or []
        note = tr(lang, "chat.cut_turns", dropped=describe_dropped(messages, dropped)) if dropped else ""
        msg = credit({"role": "assistant", "content": ""}, model.name)
        conv["messages"].append(msg)
        return stream, msg, note

    def stop(self, job) -> None:
        """Cancel the running stream at the engine too (Gradio cancels the event itself)."""
        stream = (job or {}).get("stream")
        if stream is not None:
            stream.cancel()

    def stopped(self, job, conv, request: gr.Request = None):
        """After ``stop``: the reply as kept and saved, and its stats. -> chatbot, stats.

        The cancelled event's last deltas may not have been drawn (the view is throttled, and a
        token can land while the cancel takes effect). ``close()`` returns once the stream has
        ended, so its text is final: that is the reply kept, saved and drawn (the cancelled event
        writes the same), and nothing appears later."""
        stream = (job or {}).get("stream")
        if stream is None:
            return gr.skip(), gr.skip()
        stream.close()
        keep_reply(job)
        self._save(conv, lang_of(request))
        stats = dict(stream.stats)
        stats["finish_reason"] = stats.get("finish_reason") or "cancelled"
        return view(conv), stats_md(stats, lang_of(request))

    def regenerate(self, conv, request: gr.Request = None):
        """Drop the last reply and ask for a new one. -> conv, chatbot, notice, job."""
        msgs = (conv or {}).get("messages") or []
        if msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        if not msgs:
            return conv, view(conv), notice_md(warn(tr(lang_of(request), "chat.nothing_to_regen"))), None
        return conv, view(conv), "", {"mode": "reply"}

    def cont(self, conv, request: gr.Request = None):
        """Continue the last assistant message. -> conv, chatbot, notice, job."""
        msgs = (conv or {}).get("messages") or []
        if not msgs or msgs[-1]["role"] != "assistant":
            return conv, view(conv), notice_md(warn(tr(lang_of(request), "chat.nothing_to_continue"))), None
        return conv, view(conv), "", {"mode": "continue"}

    def edit(self, conv, data: gr.EditData, request: gr.Request = None):
        """A user message was edited in place: keep the turns before it and answer it again."""
        msgs = (conv or {}).get("messages") or []
        index = data.index if isinstance(data.index, int) else data.index[0]
        value = data.value if isinstance(data.value, str) else _text_of(data.value)
        if not 0 <= index < len(msgs) or msgs[index]["role"] != "user" or not value.strip():
            return conv, view(conv), notice_md(warn(tr(lang_of(request), "chat.edit_only_user"))), None
        del msgs[index + 1:]
        msgs[index]["content"] = value.strip("\n")
        self._save(conv, lang_of(request))
        return conv, view(conv), "", {"mode": "reply"}

    # -- context meter and prompt preview ---------------------------------------------------
    def max_new_limit(self, max_new):
        """The Max new tokens slider sized to the loaded model: no reply outgrows its context. A value
        that would fill the whole context (the presets' 256 on a 256-token model) leaves no room for the
        prompt, so it becomes half the context: the room generation keeps for a reply anyway."""
        model = self.services.registry.current
        if model is None:
            return gr.skip()
        ctx, value = model.context_length, int(max_new or 0)
        if 0 < value < ctx:
            # the value only when it must change: this runs on page load and on a timer, with the value
            # the browser had when it fired; sending it back overwrote a number typed meanwhile
            # (the Inspect browser test's 24 came back as 128 in a fresh full run)
            return gr.update(maximum=ctx)
        return gr.update(maximum=ctx, value=ctx // 2)

    def model_seen(self):
        """The loaded model as ``model_changed`` compares it (None while none is loaded): page load
        records it after fitting the slider, so the poll does not fit it again with the value the
        browser had when the tick fired, over a number typed since."""
        model = self.services.registry.current
        return None if model is None else (model.name, id(model))

    def model_changed(self, seen, draft, conv, system, max_new, request: gr.Request = None):
        """Polled: when the loaded model is not the one this page last drew the meter for, fit the
        slider and redraw the meter. -> seen, max_new, meter."""
        now = self.model_seen()
        if now == seen:
            return gr.skip(), gr.skip(), gr.skip()
        limit = self.max_new_limit(max_new)
        value = limit.get("value", max_new) if isinstance(limit, dict) else max_new
        return now, limit, self.meter(draft, conv, system, value, request)

    def _draft_messages(self, draft, conv, system):
        history = list((conv or {}).get("messages") or [])
        if draft and draft.strip():
            history.append({"role": "user", "content": draft.strip("\n")})
        return build_messages(system, history)

    def meter(self, draft, conv, system, max_new, request: gr.Request = None):
        lang = lang_of(request)
        model = self.services.registry.current
        if model is None:
            loading = self.services.loading
            words = (tr(lang, "chat.meter_loading", name=html.escape(loading)) if loading
                     else tr(lang, "chat.meter_no_model"))
            return f"<div class='meter'>{words}</div>"
        messages = self._draft_messages(draft, conv, system)
        typed = bool(draft and draft.strip())
        try:
            r = context_report(model, messages, int(max_new), sending=typed)
        except Exception as e:  # a template error, say: show it instead of a broken meter
            return f"<div class='meter'>{tr(lang, 'chat.meter_error', error=html.escape(friendly(e, lang)))}</div>"
        note = ""
        if r.error:
            note = tr(lang, "chat.meter_too_long", error=html.escape(say(lang, r.error)))
        elif r.dropped:
            note = tr(lang, "chat.meter_dropped", dropped=describe_dropped(messages, r.dropped))
        return meter_html(r, tr(lang, "chat.meter_draft") if typed else "", note, lang)

    def show_prompt(self, draft, conv, system, max_new, request: gr.Request = None):
        """The exact prompt the model would get (special tokens shown) for the next reply."""
        try:
            model = current_model(self.services, lang_of(request))
            messages = self._draft_messages(draft, conv, system)
            if len(messages) == 0 or too_long_for(model.context_length, messages[-1]["content"]):
                return tr(lang_of(request), "chat.prompt_nothing")
            prepared = model.prepare(messages, int(max_new), on_overflow="truncate")
        except Exception as e:
            return friendly(e, lang_of(request))
        text = model.tokenizer.decode(prepared.ids, skip_special_tokens=False)
        head = f"# {len(prepared.ids)} tokens"
        if prepared.dropped_turns:
            head += f"; {describe_dropped(messages, prepared.dropped_turns)} left out"
        return f"{head}\n{text}"

    # -- conversations ---------------------------------------------------------------------
    def new_chat(self, system, owned, request: gr.Request = None):
        """-> conv, chatbot, stats, notice, list, sidebar notice (what was said of the last chat goes)."""
        conv = new_conversation(system or DEFAULT_SYSTEM)
        return conv, [], "", "", self.list_update(owned, None, lang_of(request)), ""

    def select(self, cid, conv, owned, request: gr.Request = None):
        """Open a saved conversation. -> conv, chatbot, system, notice, stats."""
        if not cid or (conv and conv["id"] == cid):
            return conv, view(conv), gr.skip(), "", gr.skip()
        if self.services.shared and cid not in (owned or []):
            return conv, view(conv), gr.skip(), notice_md(warn(tr(lang_of(request), "chat.not_yours"))), gr.skip()
        try:
            loaded = self.store.load(cid)
        except (KeyError, ValueError) as e:
            return conv, view(conv), gr.skip(), notice_md(warn(friendly(e, lang_of(request)))), gr.skip()
        return loaded, view(loaded), loaded.get("system", ""), "", ""

    # The sidebar's events are not queued (they answer at once), so Gradio drops their toasts:
    # each says what happened in the sidebar's own notice, next to the button that was pressed.
    def rename(self, title, conv, owned, request: gr.Request = None):
        """-> title box, sidebar notice, list."""
        lang = lang_of(request)
        if not conv or not conv.get("messages"):
            return title, notice_md(warn(tr(lang, "chat.rename_empty_chat"))), gr.skip()
        title = " ".join((title or "").split())
        if not title:
            return title, notice_md(warn(tr(lang, "chat.rename_no_title"))), gr.skip()
        conv["title"] = title[:200]
        unsaved = self._save(conv, lang)
        renamed = done_md(tr(lang, "chat.renamed", title=conv["title"]))
        return "", notice_md(unsaved) or renamed, self.list_update(owned, conv, lang)

    def ask_delete(self, conv, request: gr.Request = None):
        """Delete pressed: ask first, unless there is nothing saved to delete. -> confirm row, sidebar notice."""
        if not conv or not conv.get("messages"):
            return gr.update(visible=False), notice_md(warn(tr(lang_of(request), "chat.delete_nothing")))
        return gr.update(visible=True), ""

    def delete(self, conv, owned, request: gr.Request = None):
        """Delete the open conversation (after the confirmation step) and start a new one.
        -> conv, chatbot, sidebar notice, list, confirm row."""
        note = ""
        if conv and conv.get("messages"):
            self.store.delete(conv["id"])
            note = done_md(tr(lang_of(request), "chat.deleted", title=conv["title"]))
        fresh = new_conversation((conv or {}).get("system") or DEFAULT_SYSTEM)
        return fresh, [], note, self.list_update(owned, None, lang_of(request)), gr.update(visible=False)

    def export(self, conv, request: gr.Request = None):
        """-> files, sidebar notice."""
        if not conv or not conv.get("messages"):
            note = warn(tr(lang_of(request), "chat.export_nothing"))
            return gr.update(value=None, visible=False), notice_md(note)
        folder = Path(tempfile.mkdtemp(prefix="lmstudio-export-"))
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in conv["title"])[:40] or "chat"
        (folder / f"{stem}.json").write_text(to_json(conv), encoding="utf-8")
        (folder / f"{stem}.md").write_text(to_markdown(conv), encoding="utf-8")
        return (gr.update(value=[str(folder / f"{stem}.json"), str(folder / f"{stem}.md")], visible=True),
                done_md(tr(lang_of(request), "chat.exported_note", title=conv["title"])))

    def import_file(self, path, owned, request: gr.Request = None):
        """-> conv, chatbot, system, sidebar notice, list, owned."""
        from .common import read_text_file

        lang = lang_of(request)
        try:
            conv = self.store.import_json(read_text_file(path, self.services.max_upload_bytes, lang))
        except (ValueError, OSError) as e:
            failed = notice_md(warn(tr(lang, "chat.import_failed", error=friendly(e, lang))))
            return gr.skip(), gr.skip(), gr.skip(), failed, gr.skip(), owned
        owned = list(owned or []) + [conv["id"]]
        n = len(conv["messages"])
        note = done_md(tr(lang, "chat.imported_one", title=conv["title"]) if n == 1
                       else tr(lang, "chat.imported", title=conv["title"], n=n))
        return conv, view(conv), conv.get("system", ""), note, self.list_update(owned, conv, lang), owned


METER_COLORS = {"prompt": "#4a90e2", "reply": "#f0ad4e"}  # free space is the bar's grey track


def meter_html(r, extra: str = "", note: str = "", lang: str | None = None) -> str:
    """The context window as one bar of three parts (prompt, room kept for the reply, free) and the
    same three numbers in words; ``note`` (HTML) goes on a second line."""
    parts = "".join(
        f"<span class='meter-{name}' title='{name}: {n:,} tokens' style='width:{100 * n / max(1, r.limit):.2f}%;"
        f"background:{METER_COLORS[name]}'></span>" for name, n in (("prompt", r.used), ("reply", r.reply)))
    bar = (f"<div class='meter-bar' style='display:flex;height:8px;border-radius:4px;overflow:hidden;"
           f"background:#e5e7eb;margin-bottom:2px'>{parts}</div>")
    words = tr(lang, "chat.meter_words", limit=f"{r.limit:,}", used=f"{r.used:,}", extra=extra,
               reply=f"{r.reply:,}", free=f"{r.free:,}")
    return f"<div class='meter'>{bar}{words}" + (f"<br>{note}" if note else "") + "</div>"


def keep_reply(job: dict) -> None:
    """Write the stream's text so far into the reply being written (after what it held before: a
    continued reply). Set, not appended: the event and Stop's redraw may both write it, and the
    stream's text only grows, to its final value once the stream has ended."""
    job["msg"]["content"] = job["before"] + job["stream"].text


def done_md(message: str) -> str:
    """An inline confirmation (the counterpart of ``notice_md``'s warning)."""
    return f"✓ {message}"


def credit(msg: dict, model_name: str) -> dict:
    """Record on an assistant message which model wrote it (both, when a reply was continued by
    another model)."""
    old = msg.get("model")
    msg["model"] = model_name if not old or old == model_name else f"{old} + {model_name}"
    return msg


def answered_since(conv: dict) -> None:
    """A reply step answers the last user message. Replies are queued one at a time, so when Regenerate,
    Send or an edit came while an earlier reply was still pending, that reply has been written by the
    time this step runs: it is replaced, never followed by a second assistant message."""
    msgs = conv["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return "".join(c.get("text", "") for c in content if isinstance(c, dict))


def _no_model_text(services, lang: str | None = None) -> str:
    try:
        current_model(services, lang)
    except NoModelError as e:
        return str(e)
    return ""
